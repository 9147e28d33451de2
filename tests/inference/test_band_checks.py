"""Bands that cannot be fooled: checkpoints record the training rasters' band count, data type
and names; ``densekit tile`` refuses a raster that differs unless ``--bands`` says which of its
bands the model reads."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from helpers import TEST_DATA, write_raster

from densekit.cli import main
from densekit.data.band_layout import BandLayout
from densekit.errors import DensekitError
from densekit.inference import TileOptions, tile
from densekit.models.checkpoint import read_checkpoint
from densekit.tasks import SegmentationTask

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 112}


def pan(path) -> str:
    """A 1-band uint16 panchromatic raster with its band named PAN."""
    data = np.random.default_rng(0).integers(200, 2000, (1, 112, 112)).astype(np.uint16)
    write_raster(path, data, crs="EPSG:32633")
    with rasterio.open(path, "r+") as d:
        d.descriptions = ("PAN",)
    return str(path)


def rgb(path) -> str:
    """A 3-band 8-bit raster without band names."""
    data = np.random.default_rng(1).integers(1, 255, (3, 112, 112)).astype(np.uint8)
    write_raster(path, data, crs="EPSG:32633")
    return str(path)


@pytest.fixture
def pan_checkpoint(tmp_path):
    """A model trained (here: saved) on 1-band uint16 rasters, the band repeated on the three
    channels of an RGB backbone, as the buildings quickstart does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbones warn
        task = SegmentationTask(
            weights="random",
            backbone_overrides=TINY,
            bands=[1, 1, 1],
            mean=[1000.0] * 3,
            std=[500.0] * 3,
        )
    layout = BandLayout.of(pan(tmp_path / "pan.tif"))
    return str(task.model.save(tmp_path / "pan.ckpt", "SegmentationTask", rasters=layout))


def run(ckpt, src, out, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbones warn
        return tile(
            ckpt, src, out, options=TileOptions(tile=112, overlap=16, progress=False, **options)
        )


def test_the_layout_describes_count_type_range_and_names(tmp_path):
    layout = BandLayout.of(pan(tmp_path / "p.tif"))
    assert layout == BandLayout(1, "uint16", ("PAN",))
    assert layout.describe() == "1 band, uint16 (0..65535), names: PAN"
    assert BandLayout.of(rgb(tmp_path / "c.tif")).describe() == (
        "3 bands, uint8 (0..255), no band names"
    )
    assert layout.differences(BandLayout(1, "uint16", (None,))) == ["band names"]
    assert BandLayout.from_dict(layout.to_dict(), "x") == layout
    with pytest.raises(DensekitError, match=r"ckpt: the record of the training rasters"):
        BandLayout.from_dict({"count": 1}, "ckpt")


def test_a_one_band_checkpoint_on_an_rgb_raster_is_refused_naming_both(pan_checkpoint, tmp_path):
    src = rgb(tmp_path / "rgb.tif")
    with pytest.raises(
        DensekitError,
        match=r"rgb.tif has 3 bands, uint8 \(0..255\), no band names; the checkpoint .*pan.ckpt "
        r"was trained on rasters with 1 band, uint16 \(0..65535\), names: PAN \(different band "
        r"count, data type, band names\); give --bands: 1 or 3 ",
    ):
        run(pan_checkpoint, src, tmp_path / "o.tif")
    assert not (tmp_path / "o.tif").exists()
    [record] = run(pan_checkpoint, src, tmp_path / "o.tif", bands=(1,))  # band 1 on 3 channels
    assert record["bands"] == [1]
    with rasterio.open(tmp_path / "o.tif") as o:
        assert o.read(1).shape == (112, 112)
    run(pan_checkpoint, src, tmp_path / "o3.tif", bands=(3, 2, 1))  # or one per channel
    with pytest.raises(DensekitError, match=r"--bands 1,2: 2 band\(s\), .* give 1 or 3 1-based"):
        run(pan_checkpoint, src, tmp_path / "o2.tif", bands=(1, 2))


def test_the_cli_refuses_with_both_descriptions_and_accepts_bands(pan_checkpoint, tmp_path, capsys):
    src = rgb(tmp_path / "rgb.tif")
    base = [
        "tile",
        "--checkpoint",
        pan_checkpoint,
        "--input",
        src,
        "--tile",
        "112",
        "--overlap",
        "16",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*base, "--output", str(tmp_path / "a.tif"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "3 bands, uint8 (0..255)" in err and "1 band, uint16 (0..65535)" in err
        assert main([*base, "--output", str(tmp_path / "a.tif"), "--bands", "1"]) == 0
    assert (tmp_path / "a.tif").exists()


def test_a_raster_like_the_training_ones_runs_without_bands(pan_checkpoint, tmp_path):
    run(pan_checkpoint, pan(tmp_path / "other_pan.tif"), tmp_path / "o.tif")
    assert (tmp_path / "o.tif").exists()
    unnamed = tmp_path / "unnamed.tif"
    write_raster(unnamed, np.full((1, 112, 112), 900, np.uint16), crs="EPSG:32633")
    with pytest.raises(DensekitError, match=r"no band names; .* \(different band names\)"):
        run(pan_checkpoint, unnamed, tmp_path / "u.tif")


def test_fit_records_the_training_rasters(chips, fit, tmp_path):
    data = chips("segmentation", val=False, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = SegmentationTask(
            num_classes=3, weights="random", backbone_overrides=TINY, scale=1 / 255
        )
    trainer = fit(task, data, seed=0, max_steps=1, default_root_dir=tmp_path)
    trainer.save_checkpoint(tmp_path / "seg.ckpt")
    rasters = read_checkpoint(tmp_path / "seg.ckpt").rasters
    assert rasters == {"count": 3, "dtype": "uint8", "names": [None, None, None]}


def test_an_old_checkpoint_says_what_cannot_be_checked(tmp_path):
    """A checkpoint without the record still runs; the warning says that only the band count
    was checked."""
    src = rgb(tmp_path / "rgb.tif")
    old = TEST_DATA / "checkpoints_v0" / "seg_linear.ckpt"
    assert read_checkpoint(old).rasters is None
    with pytest.warns(UserWarning, match=r"only the band count can be checked, not the data type"):
        tile(
            old, src, tmp_path / "o.tif", options=TileOptions(tile=112, overlap=16, progress=False)
        )


def pan_training_config(tmp_path) -> tuple[str, str, str]:
    """A fit config on two 1-band uint16 PAN rasters (band 1 on the three channels), and
    folders of 3-band 8-bit rasters and their labels to validate, test or predict on."""
    import yaml

    folders = {n: tmp_path / n for n in ("pan", "labels", "rgb", "rgb_labels")}
    for folder in folders.values():
        folder.mkdir()
    label = (np.arange(112 * 112).reshape(1, 112, 112) % 3 == 0).astype(np.uint8)
    for k in range(2):
        pan(folders["pan"] / f"c{k}.tif")
        rgb(folders["rgb"] / f"c{k}.tif")
        for name in ("labels", "rgb_labels"):
            write_raster(folders[name] / f"c{k}.tif", label, crs="EPSG:32633")
    doc = {
        "seed_everything": 0,
        "trainer": {"max_steps": 1, "logger": False, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "run")},
        "model": {"class_path": "densekit.tasks.SegmentationTask", "init_args": {
            "num_classes": 2, "weights": "random", "backbone_overrides": TINY,
            "bands": [1, 1, 1], "mean": [1000.0] * 3, "std": [500.0] * 3}},
        "data": {"class_path": "densekit.data.SegmentationDataModule", "init_args": {
            "images": str(folders["pan"]), "labels": str(folders["labels"]),
            "bands": [1, 1, 1], "batch_size": 2}},
    }  # fmt: skip
    config = tmp_path / "pan.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(config), str(folders["rgb"]), str(folders["rgb_labels"])


@pytest.mark.parametrize("command", ["predict", "test"])
def test_predict_and_test_refuse_other_rasters_and_accept_bands(tmp_path, capsys, command):
    """The Done-when of the issue for the Lightning commands: a 1-band checkpoint on 3-band
    rasters is refused naming both, before the model is built, and runs with ``--bands 1``."""
    config, images, labels = pan_training_config(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["fit", "--config", config]) == 0
        (ckpt,) = (tmp_path / "run").rglob("last.ckpt")
        capsys.readouterr()
        argv = [command, "--config", config, "--ckpt_path", str(ckpt),
                "--data.test_images", images, "--data.test_labels", labels]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert "rgb/c0.tif has 3 bands, uint8 (0..255), no band names; the checkpoint" in err[0]
        assert "1 band, uint16 (0..65535), names: PAN" in err[0] and "give --bands" in err[0]
        assert not list((tmp_path / "run").rglob("predictions"))
        assert main([*argv, "--bands", "1,2"]) == 2  # neither 1 (distinct) nor 3 (channels)
        assert "--bands 1,2: 2 band(s)" in capsys.readouterr().err
        assert main([*argv, "--bands", "1"]) == 0
    if command == "predict":
        written = sorted((tmp_path / "run").rglob("predictions/*.tif"))
        assert written
        with rasterio.open(written[0]) as out:
            assert out.count == 1 and out.dtypes[0] == "uint8"


def test_bands_of_the_lightning_commands_are_checked_before_anything_runs(capsys):
    from densekit.commands.stage_bands import take_bands

    assert take_bands(["predict", "--config", "c.yaml", "--bands", "4,3,2"]) == (
        ["predict", "--config", "c.yaml"],
        (4, 3, 2),
    )
    for argv, message in (
        (["predict", "--bands="], "--bands is empty"),
        (["predict", "--bands", ""], "--bands is empty"),
        (["predict", "--bands"], "--bands needs a value"),
        (["predict", "--bands", "1", "--bands", "2"], "--bands is given twice"),
        (["fit", "--bands", "1"], "--bands is an option of densekit validate, test, predict"),
    ):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
