"""Tiled inference: blending, streaming output, georeferencing, resume, distribution, errors."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import rasterio
import torch
import torch.multiprocessing as mp
from helpers import (
    TEST_DATA,
    free_port,
    needs_shared_data,
    random_tiny_weights,
    rank_tile,
    write_raster,
)
from rasterio.transform import from_origin
from torch import nn

from densekit.cli import main
from densekit.errors import DensekitError, InputImageError
from densekit.inference import (
    Plan,
    StoppedEarly,
    TileOptions,
    Trained,
    blend,
    hann_window,
    tile,
    tile_positions,
    tile_raster,
)
from densekit.inference.blend import StripSums
from densekit.models import InputSpec, OutputSpec
from densekit.models.outputs import CLASS_NODATA
from densekit.tasks import ChangeDetectionTask, DepthTask, SegmentationTask

CHIPS = TEST_DATA / "chips"
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def run_tile(checkpoint, inputs, output, inputs2=None, **options):
    """:func:`tile` with ``options`` as :class:`TileOptions` fields (no progress bar unless
    asked)."""
    return tile(checkpoint, inputs, output, inputs2, TileOptions(**{"progress": False, **options}))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, chips, fit):
    """Checkpoints of each kind after two training steps on the chips."""
    root = tmp_path_factory.mktemp("ckpt")
    weights = random_tiny_weights(root / "tiny.pth", **TINY)
    common = dict(weights=weights, backbone_overrides=TINY, scale=1 / 255)

    def trained(task, kind, name):
        data = chips(kind, val=False, batch_size=4)
        trainer = fit(task, data, seed=None, max_steps=2, default_root_dir=root)
        trainer.save_checkpoint(root / name)
        return str(root / name)

    change = ChangeDetectionTask(**common)
    detail = ChangeDetectionTask(  # the pixel-detail options
        input_upscale=2.0, upsampler="guided", pixel_branch=4, **common
    )
    names = ["bg", "road", "roof"]
    return {
        "seg": trained(
            SegmentationTask(num_classes=3, class_names=names, **common), "segmentation", "seg.ckpt"
        ),
        "depth": trained(DepthTask(**common), "depth", "depth.ckpt"),
        "change": trained(change, "change", "change.ckpt"),
        "change_detail": trained(detail, "change", "change_detail.ckpt"),
        "weights": weights,
    }


def _raster(path, w=150, h=130, bands=3, nodata_box=True, seed=0, transform=None):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    data = np.stack(
        [((xx // 9 + yy // 7 + b) % 5) * 40 + rng.integers(1, 30, (h, w)) for b in range(bands)]
    ).astype(np.uint8)
    if nodata_box:
        data[:, :20, :30] = 0
    write_raster(path, data, crs="EPSG:32633", transform=transform, nodata=0)
    return str(path)


# -- pieces ------------------------------------------------------------------------------------
def test_hann_window_is_positive_symmetric_and_peaks_in_the_middle():
    w = hann_window(64)
    assert float(w.min()) > 0 and torch.allclose(w, w.flip(0))
    assert int(w.argmax()) in (31, 32) and float(w.max()) > 0.99


def test_tile_positions_cover_the_raster_without_shifting():
    pos = tile_positions(1000, 224, 192)
    assert pos[0] == 0 and all(b - a == 192 for a, b in itertools.pairwise(pos))
    assert pos[-1] + 224 >= 1000 > pos[-2] + 224
    assert tile_positions(224, 224, 192) == [0]


def test_the_sums_held_do_not_grow_with_the_raster_width():
    for width in (20_000, 200_000):
        cols, rows = tile_positions(width, 504, 472), tile_positions(3000, 504, 472)
        sums = StripSums(Plan(504, 472, cols, rows, width, 3000), channels=3)
        assert sums.acc.shape == (3, 504, blend.FINISH_COLUMNS + 504)
        assert sums.carry.shape == (3, 32, cols[-1] + 504)  # only the overlap rows span the width


class PixelNet(nn.Module):
    """Exactly translation-equivariant: a 1x1 conv on per-pixel features."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Tanh(), nn.Conv2d(8, 1, 1))

    def forward(self, x):
        return self.conv(torch.nan_to_num(x / 255, nan=0.0))


def pixel_model() -> Trained:
    """Any module runs through the tiled path, given what it outputs and takes."""
    return Trained(
        model=PixelNet(),
        output=OutputSpec("depth", 1, "none", description="depth"),
        inputs=InputSpec(3, 1, None, (127.5,) * 3, (64.0,) * 3, 1.0),
    )


def test_translation_equivariant_model_gives_the_untiled_result(tmp_path):
    src = _raster(tmp_path / "in.tif", w=300, h=260, nodata_box=False)
    model = pixel_model()
    tile_raster(model, src, tmp_path / "out.tif", options=TileOptions(tile=64, overlap=16))
    with rasterio.open(src) as s:
        x = torch.from_numpy(s.read().astype(np.float32))[None]
    with torch.no_grad():
        full = model.model(x)[0, 0].numpy()
    with rasterio.open(tmp_path / "out.tif") as s:
        tiled = s.read(1)
    assert tiled.shape == full.shape
    assert np.abs(tiled - full).max() <= 4 * np.finfo(np.float32).eps * np.abs(full).max()


# -- outputs -----------------------------------------------------------------------------------
def test_segmentation_output_is_a_georeferenced_cog(ckpts, tmp_path):
    src = _raster(tmp_path / "in.tif", transform=from_origin(400000, 5000000, 2.5, 2.5))
    out = tmp_path / "seg.tif"
    [record] = run_tile(ckpts["seg"], src, out, tile=56, overlap=14, probabilities=True)
    with rasterio.open(src) as s, rasterio.open(out) as o:
        assert (o.crs, o.transform, o.width, o.height) == (s.crs, s.transform, s.width, s.height)
        assert o.dtypes[0] == "uint8" and o.nodata == CLASS_NODATA
        assert json.loads(o.tags()["CLASS_NAMES"]) == ["bg", "road", "roof"]
        assert o.colorinterp[0].name == "palette" and o.colormap(1)[1][:3] == (230, 25, 75)
        assert o.block_shapes[0] == (512, 512) and o.profile["compress"] == "deflate"
        assert o.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        classes = o.read(1)
    assert (classes[:20, :30] == CLASS_NODATA).all()  # input nodata -> output nodata
    assert set(np.unique(classes[20:])) <= {0, 1, 2}
    with rasterio.open(tmp_path / "seg_probs.tif") as p:
        probs = p.read()
    assert probs.shape == (3, 130, 150) and np.isnan(probs[:, :20, :30]).all()
    np.testing.assert_allclose(probs[:, 20:].sum(0), 1, atol=1e-5)
    np.testing.assert_array_equal(probs[:, 20:].argmax(0), classes[20:])
    side = json.loads((tmp_path / "seg.json").read_text())
    assert side["backbone"]["sha256"] and side["checkpoint_sha256"] and side["tiles"] == 4 * 3
    assert record["timings"]["total_s"] > 0 and not (tmp_path / "seg.tif.partial").exists()


def test_depth_output_is_float_with_nan_nodata(ckpts, tmp_path):
    src = _raster(tmp_path / "in.tif")
    run_tile(ckpts["depth"], src, tmp_path / "d.tif", tile=56, overlap=14)
    with rasterio.open(tmp_path / "d.tif") as o:
        d = o.read(1)
        assert o.dtypes[0] == "float32" and np.isnan(o.nodata)
    assert np.isnan(d[:20, :30]).all() and np.isfinite(d[20:]).all() and (d[20:] > 0).all()


def test_change_detection_aligns_date_two_on_date_one(ckpts, tmp_path):
    a = _raster(tmp_path / "a.tif", transform=from_origin(500000, 4600000, 10, 10))
    # date 2: 5 m pixels, shifted by 3 pixels of date 1
    b = _raster(
        tmp_path / "b.tif",
        w=320,
        h=280,
        seed=1,
        nodata_box=False,
        transform=from_origin(500030, 4600000, 5, 5),
    )
    run_tile(ckpts["change"], a, tmp_path / "c.tif", inputs2=b, tile=56, overlap=14)
    with rasterio.open(tmp_path / "c.tif") as o:
        c = o.read(1)
        assert (o.width, o.height) == (150, 130)
    assert (c[:, :3] == CLASS_NODATA).all()  # date 2 does not cover these columns
    assert set(np.unique(c[20:, 30:])) <= {0, 1}
    far = _raster(tmp_path / "far.tif", transform=from_origin(900000, 4600000, 10, 10))
    with pytest.raises(DensekitError, match=r"does not overlap.*far.tif"):
        run_tile(ckpts["change"], a, tmp_path / "c2.tif", inputs2=far, tile=56)
    assert not (tmp_path / "c2.tif").exists()


def test_a_change_model_with_the_pixel_detail_options(ckpts, tmp_path, capsys):
    a = _raster(tmp_path / "a.tif", seed=0, nodata_box=False)
    b = _raster(tmp_path / "b.tif", seed=1, nodata_box=False)
    [record] = run_tile(
        ckpts["change_detail"],
        a,
        tmp_path / "c.tif",
        inputs2=b,
        tile=56,
        overlap=14,
        batch_size=2,
        device="cpu",
        progress=True,
    )
    assert record["backbone_tile"] == 112  # 56 px tiles resized x2 for the backbone
    assert "the backbone sees 112 x 112 px per 56 px tile" in capsys.readouterr().err
    with rasterio.open(tmp_path / "c.tif") as o:
        c = o.read(1)
    assert c.shape == (130, 150) and set(np.unique(c)) <= {0, 1}


def test_many_inputs_in_one_call(ckpts, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        _raster(folder / f"r{i}.tif", seed=i)
    records = run_tile(ckpts["seg"], folder, tmp_path / "out", tile=56, overlap=14)
    assert len(records) == 2
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == ["r0.tif", "r1.tif"]


def test_finishing_in_column_blocks_gives_the_same_bytes(ckpts, tmp_path, monkeypatch):
    src = _raster(tmp_path / "in.tif", w=700, h=150)
    opts = dict(tile=56, overlap=14, probabilities=True)
    monkeypatch.setattr(blend, "FINISH_COLUMNS", 10_000)  # the whole strip at once
    run_tile(ckpts["seg"], src, tmp_path / "whole.tif", **opts)
    monkeypatch.setattr(blend, "FINISH_COLUMNS", 256)  # blocks of 256 columns as tiles arrive
    run_tile(ckpts["seg"], src, tmp_path / "blocks.tif", **opts)
    for a, b in (("whole.tif", "blocks.tif"), ("whole_probs.tif", "blocks_probs.tif")):
        assert (tmp_path / a).read_bytes() == (tmp_path / b).read_bytes()


# -- resume and distribution -------------------------------------------------------------------
def test_resume_after_a_stop_gives_the_same_bytes(ckpts, tmp_path):
    src = _raster(tmp_path / "in.tif", w=200, h=260)
    opts = dict(tile=56, overlap=14, probabilities=True)
    run_tile(ckpts["seg"], src, tmp_path / "full.tif", **opts)
    with pytest.raises(StoppedEarly):
        run_tile(ckpts["seg"], src, tmp_path / "part.tif", stop_after_strips=2, **opts)
    assert not (tmp_path / "part.tif").exists()
    progress = json.loads((tmp_path / "part.tif.partial" / "progress-0.json").read_text())
    assert progress["strips_done"] == 2
    with pytest.raises(DensekitError, match=r"other settings.*overlap"):
        run_tile(ckpts["seg"], src, tmp_path / "part.tif", resume=True, **{**opts, "overlap": 8})
    run_tile(ckpts["seg"], src, tmp_path / "part.tif", resume=True, **opts)
    for a, b in (("full.tif", "part.tif"), ("full_probs.tif", "part_probs.tif")):
        assert (tmp_path / a).read_bytes() == (tmp_path / b).read_bytes()


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_same_bytes(ckpts, tmp_path):
    src = _raster(tmp_path / "in.tif", w=240, h=1400, nodata_box=False)
    args = [
        "--checkpoint",
        ckpts["seg"],
        "--input",
        src,
        "--tile",
        "56",
        "--overlap",
        "14",
        "--no-progress",
        "--batch-size",
        "1",
    ]
    assert main(["tile", *args, "--output", str(tmp_path / "full.tif")]) == 0
    out = tmp_path / "killed.tif"
    cmd = [sys.executable, "-m", "densekit.cli", "tile", *args, "--output", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    progress = tmp_path / "killed.tif.partial" / "progress-0.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and json.loads(progress.read_text())["strips_done"] >= 3:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail("the run ended before it could be killed; make the raster larger")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert main(["tile", *args, "--output", str(out), "--resume"]) == 0
    assert out.read_bytes() == (tmp_path / "full.tif").read_bytes()


@pytest.mark.slow
def test_two_processes_give_the_same_output_as_one(ckpts, tmp_path):
    src = _raster(tmp_path / "in.tif", w=200, h=300)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: CPU kernels may round differently per thread count
    try:
        run_tile(
            ckpts["seg"],
            src,
            tmp_path / "one.tif",
            tile=56,
            overlap=14,
            probabilities=True,
        )
    finally:
        torch.set_num_threads(threads)
    mp.spawn(rank_tile, args=(free_port(), ckpts["seg"], src, str(tmp_path / "two.tif")), nprocs=2)
    for a, b in (("one.tif", "two.tif"), ("one_probs.tif", "two_probs.tif")):
        assert (tmp_path / a).read_bytes() == (tmp_path / b).read_bytes()
    side = json.loads((tmp_path / "two.json").read_text())
    assert side["world_size"] == 2


# -- bad input ---------------------------------------------------------------------------------
def test_bad_inputs_fail_clearly_and_write_nothing(ckpts, tmp_path):
    src = _raster(tmp_path / "in.tif")
    out = tmp_path / "o.tif"
    with pytest.raises(InputImageError, match=r"missing.tif"):
        run_tile(ckpts["seg"], tmp_path / "missing.tif", out)
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputImageError, match=r"corrupt.tif"):
        run_tile(ckpts["seg"], tmp_path / "corrupt.tif", out)
    four = _raster(tmp_path / "four.tif", bands=4)
    with pytest.raises(
        DensekitError,
        match=r"four.tif has 4 bands, uint8 .*seg.ckpt was trained on rasters with 3 bands, "
        r"uint8 \(0..255\), no band names \(different band count\); give --bands: 3 ",
    ):
        run_tile(ckpts["seg"], four, out)
    with pytest.raises(DensekitError, match="does not exist"):
        run_tile(ckpts["seg"], src, tmp_path / "no" / "o.tif", tile=56)
    with pytest.raises(DensekitError, match="change model and takes two dates"):
        run_tile(ckpts["change"], src, out, tile=56)
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(DensekitError, match=r"text.ckpt: not a readable PyTorch checkpoint"):
        run_tile(tmp_path / "text.ckpt", src, out, tile=56)
    (tmp_path / "text.ckpt").unlink()
    with pytest.raises(DensekitError, match="not a checkpoint of densekit fit"):
        torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
        run_tile(tmp_path / "other.ckpt", src, out, tile=56)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "corrupt.tif",
        "four.tif",
        "in.tif",
        "other.ckpt",
    ]


def test_cli_tile_exit_codes(ckpts, tmp_path):
    src = _raster(tmp_path / "in.tif", w=150, h=300)
    base = [
        "tile",
        "--checkpoint",
        ckpts["seg"],
        "--input",
        src,
        "--tile",
        "56",
        "--overlap",
        "14",
        "--no-progress",
    ]
    assert main([*base, "--output", str(tmp_path / "a.tif")]) == 0
    assert main([*base, "--output", str(tmp_path / "b.tif"), "--stop-after-strips", "1"]) == 3
    assert main([*base, "--output", str(tmp_path / "b.tif"), "--resume"]) == 0
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()
    assert main([*base, "--output", str(tmp_path / "nowhere" / "c.tif")]) == 2


def test_tiles_the_real_blue_marble(ckpts, tmp_path):
    src = needs_shared_data("bluemarble-large-geotiff") / "bluemarble_200412_5400x2700_epsg4326.tif"
    # a 600 x 400 piece around the Mediterranean
    with rasterio.open(src) as s:
        win = rasterio.windows.Window(2700, 600, 600, 400)
        profile = s.profile
        transform = s.window_transform(win)
        data = s.read(window=win)
    profile.update(width=600, height=400, transform=transform)
    piece = tmp_path / "piece.tif"
    with rasterio.open(piece, "w", **profile) as d:
        d.write(data)
    [rec] = run_tile(ckpts["seg"], piece, tmp_path / "bm.tif", tile=112, overlap=28)
    with rasterio.open(tmp_path / "bm.tif") as o:
        assert o.crs.to_epsg() == 4326 and o.transform == transform
        assert o.overviews(1) == [2]  # COG overviews down to one 512-pixel block
        assert set(np.unique(o.read(1))) <= {0, 1, 2}
    assert rec["size"] == [600, 400]


def test_input_in_other_units_than_the_training_data_warns(ckpts, tmp_path):
    data = (np.random.default_rng(0).integers(3000, 9000, (3, 130, 150))).astype(np.uint16)
    write_raster(tmp_path / "refl.tif", data, crs="EPSG:32633")
    refl, out = tmp_path / "refl.tif", tmp_path / "o.tif"
    with pytest.raises(DensekitError, match=r"refl.tif has 3 bands, uint16 .*\(different data"):
        run_tile(ckpts["seg"], refl, out, tile=56, overlap=14)
    with pytest.warns(UserWarning, match=r"refl.tif: band means far from .*band 1 at \+"):
        run_tile(ckpts["seg"], refl, out, tile=56, overlap=14, bands=(1, 2, 3))
    src = _raster(tmp_path / "in.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        run_tile(ckpts["seg"], src, tmp_path / "ok.tif", tile=56, overlap=14)


def test_date_two_bands_are_found_by_name_in_their_own_order(ckpts, tmp_path):
    """Each date's named bands are read from that date's own positions."""
    rng = np.random.default_rng(0)
    a = rng.integers(1, 255, (3, 120, 120)).astype(np.uint8)
    b = a[::-1].copy()  # the same bands stored in the reverse order
    for name, data, names in (("a.tif", a, ("R", "G", "B")), ("b.tif", b, ("B", "G", "R"))):
        write_raster(tmp_path / name, data, crs="EPSG:32633")
        with rasterio.open(tmp_path / name, "r+") as d:
            d.descriptions = names
    import dataclasses

    from densekit.inference import load_trained, open_input

    model = load_trained(ckpts["change"])
    model.inputs = dataclasses.replace(model.inputs, bands=("R", "G", "B"))
    a, b = str(tmp_path / "a.tif"), str(tmp_path / "b.tif")
    with pytest.raises(DensekitError, match=r"a.tif has 3 bands, uint8 \(0..255\), names: R, G, B"):
        open_input(model, a, b)  # trained on unnamed bands
    raster = open_input(model, a, b, bands=("R", "G", "B"))
    from densekit.data.datasets import RasterReaders

    with RasterReaders() as readers:
        x1, x2 = raster.read(readers, 0, 0, 56)
    np.testing.assert_array_equal(x1, x2)  # same content once each is read by name


def test_class_names_and_paths_with_xml_characters(ckpts, tmp_path):
    folder = tmp_path / "R&D <x>"
    folder.mkdir()
    src = _raster(folder / "in.tif")
    run_tile(ckpts["seg"], src, folder / "o&p.tif", tile=56, overlap=14, probabilities=True)
    with rasterio.open(folder / "o&p_probs.tif") as o:
        assert o.descriptions == ("p_bg", "p_road", "p_roof")


def test_a_failing_run_leaves_no_thread_behind(ckpts, tmp_path, monkeypatch):
    import threading

    src = _raster(tmp_path / "in.tif", w=150, h=400)
    calls = {"n": 0}
    original = Trained.__call__

    def failing(self, *x, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return original(self, *x, **kwargs)

    monkeypatch.setattr(Trained, "__call__", failing)
    before = threading.active_count()
    tic = time.perf_counter()
    with pytest.raises(RuntimeError, match="boom"):
        run_tile(
            ckpts["seg"],
            src,
            tmp_path / "o.tif",
            tile=56,
            overlap=14,
            batch_size=1,
            prefetch=1,
        )
    assert time.perf_counter() - tic < 30 and threading.active_count() == before
    assert not (tmp_path / "o.tif").exists()
