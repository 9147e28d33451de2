"""`densekit quickstart`: the main job on the bundled data, every output opened and checked
(short training: the pipeline, not the scores, is under test)."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from densekit.benchmark.card import load_card
from densekit.cli import main
from densekit.commands.quickstart import GEO_IMAGE, OUTPUT_FOLDERS, OUTPUTS


def run(argv: list[str]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(argv)


@pytest.mark.slow
def test_geo_quickstart_writes_every_output(tmp_path, capsys):
    import rasterio

    out = tmp_path / "qs"
    assert run(["quickstart", "--out", str(out), "--epochs", "2"]) == 0
    for name in OUTPUTS["geo"]:
        assert (out / name).is_file(), name
    for name in OUTPUT_FOLDERS["geo"]:
        assert (out / name).is_dir(), name
    with rasterio.open(out / "prediction.tif") as pred, rasterio.open(GEO_IMAGE) as image:
        assert pred.crs == image.crs and pred.crs.to_epsg() == 4326
        assert pred.transform == image.transform and pred.shape == image.shape
        assert pred.dtypes[0] == "uint8" and set(np.unique(pred.read(1))) <= {0, 1}
    overview = Image.open(out / "overview.png")
    assert overview.width > 4 * 300 and overview.mode in ("RGB", "RGBA")
    pca = np.asarray(Image.open(out / "features_pca.png").convert("RGB"))
    assert pca.std() > 10  # a picture, not a flat image
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "water" and 0 <= metrics["test_metrics"]["iou_water"] <= 1
    scores = metrics["test_columns"]
    assert 0.4 < scores["trivial"] < 0.5  # water is 46 % of the test columns' labelled pixels
    assert scores["per_pixel_logistic_regression"] > 0.8
    assert 0 < sum(metrics["features_pca"]["explained_variance"]) <= 1
    assert metrics["backbone"]["name"] == "densekit_vitt16"
    ckpt = torch.load(out / "model.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["densekit"]["task"] == "SegmentationTask"
    assert ckpt["densekit"]["rasters"]["count"] == 13
    err = capsys.readouterr().err
    assert "[7/7]" in err and "densekit fit --config" in err and str(out) in err
    assert "trivial predictor ('water' everywhere)" in err and "per-pixel logistic" in err
    for name in [*OUTPUTS["geo"], *OUTPUT_FOLDERS["geo"]]:
        assert str(out / name) in err, name
    # the written config trains again as it is, and the benchmark card it suggests loads
    config = ["--config", str(out / "quickstart.yaml"), "--trainer.fast_dev_run", "true"]
    assert run(["fit", *config, "--trainer.default_root_dir", str(tmp_path / "again")]) == 0
    card = load_card(out / "benchmark_card.yaml")
    assert card.spec["data"]["images"] == str(GEO_IMAGE)
    assert f"densekit benchmark {out / 'benchmark_card.yaml'}" in err


@pytest.mark.slow
def test_default_quickstart_beats_the_trivial_and_matches_the_per_pixel_baseline(tmp_path):
    """The done-when of the first result: the default run's water IoU is above the trivial
    predictor's and above, or within 0.02 of, the per-pixel baseline's, measured in the same
    run; its CPU time is under 3 minutes (so its wall time is too on an idle 2-core machine)."""
    tic = time.process_time()
    assert run(["quickstart", "--out", str(tmp_path / "qs")]) == 0
    cpu = time.process_time() - tic
    scores = json.loads((tmp_path / "qs" / "metrics.json").read_text())["test_columns"]
    assert scores["model"] > scores["trivial"] + 0.2
    assert scores["model"] >= scores["per_pixel_logistic_regression"] - 0.02
    assert cpu < 180


@pytest.mark.slow
def test_buildings_task_runs_and_says_it_is_hard(tmp_path, capsys):
    out = tmp_path / "qsb"
    assert run(["quickstart", "--task", "buildings", "--out", str(out), "--epochs", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "buildings" and "iou_building" in metrics["test_metrics"]
    assert "does badly" in capsys.readouterr().err


@pytest.mark.slow
def test_medical_quickstart_writes_nifti_seg_and_png(tmp_path):
    import highdicom as hd

    from densekit.commands.quickstart import CT_SERIES
    from densekit.medical import read_volume

    out = tmp_path / "qsm"
    assert run(["quickstart", "--domain", "medical", "--out", str(out), "--epochs", "2"]) == 0
    for name in OUTPUTS["medical"]:
        assert (out / name).is_file(), name
    seg_codes = json.loads((out / "liver_seg.dcm.metrics.json").read_text())["segment_codes"]
    assert seg_codes["liver"]["type"][2] == "Liver"
    ct, labels = read_volume(CT_SERIES), read_volume(out / "liver.nii.gz")
    assert labels.same_grid(ct, tol_mm=1e-3) and set(np.unique(labels.array)) <= {0, 1}
    seg = hd.seg.segread(out / "liver_seg.dcm")
    assert seg.number_of_segments == 1
    assert Image.open(out / "overview.png").width > 900
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["volume_metrics"]["mean_dice"] <= 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "--epochs 0"),
        (["--weights", "/nonexistent/w.pth"], "/nonexistent/w.pth"),
        (["--domain", "medical", "--task", "water"], "--task water"),
    ],
)
def test_bad_arguments_exit_2_naming_them(tmp_path, capsys, argv, message):
    assert run(["quickstart", "--out", str(tmp_path / "q"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "q").exists()  # nothing written
