"""Checkpoints written before the model redesign give what they gave then, through every path
that reads a checkpoint: ``densekit tile``, ``volume``, ``test`` and ``predict``.

The checkpoints and their outputs are in ``tests/data/checkpoints_v0`` (written by its
``generate.py`` on commit 5a9e606, one torch thread). Floating-point results are compared bit for
bit on the CPU family and torch build that wrote them (``expected.json`` records both); on
another machine, kernels may round differently, so floats are compared to 1e-5 there and class
maps wherever the stored probabilities do not tie within that tolerance.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from helpers import TEST_DATA

from densekit.cli import main

LEGACY = TEST_DATA / "checkpoints_v0"
_spec = importlib.util.spec_from_file_location("legacy_generate", LEGACY / "generate.py")
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)
EXPECTED = json.loads((LEGACY / "expected.json").read_text())
SAME_MACHINE = EXPECTED["cpu"] == generate.cpu_model() and EXPECTED["torch"] == torch.__version__
GEO = [k for k, (_, _, data) in generate.KINDS.items() if data != "medical"]
MEDICAL = [k for k, (_, _, data) in generate.KINDS.items() if data == "medical"]


@pytest.fixture(autouse=True)
def one_thread():
    """The fixtures were written with one torch thread (a sum's order can depend on threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(argv: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0, argv


def warn_if_not_exact(name: str) -> None:
    """Say so when the comparison cannot be bit for bit (another CPU family or torch build)."""
    if not SAME_MACHINE:
        warnings.warn(
            f"{name}: compared to 1e-5, not bit for bit: this CPU or torch build "
            f"({generate.cpu_model()}, torch {torch.__version__}) is not the one that wrote the "
            f"fixtures ({EXPECTED['cpu']}, torch {EXPECTED['torch']})",
            stacklevel=2,
        )


def assert_same(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, name
    warn_if_not_exact(name)
    if SAME_MACHINE:
        equal = np.array_equal(got, want, equal_nan=True)
        diff = np.nanmax(np.abs(got.astype(np.float64) - want)) if got.size else 0.0
        assert equal, f"{name}: not bit for bit (max abs diff {diff})"
    elif got.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
    else:
        assert np.mean(got != want) < 1e-3, f"{name}: {np.sum(got != want)} labels differ"


def config_file(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(generate.config(kind, tmp_path / "run"), sort_keys=False))
    return path


@pytest.mark.parametrize("kind", GEO)
def test_tile_and_predict_give_the_stored_outputs(kind, tmp_path):
    want = np.load(LEGACY / f"{kind}.npz")
    ckpt = LEGACY / f"{kind}.ckpt"
    got = generate.tiled(ckpt, kind, tmp_path / "tiled.tif")
    assert sorted(k for k in want if k.startswith("tile")) == sorted(got)
    for name, array in got.items():
        assert_same(f"{kind} {name}", array, want[name])
    with rasterio.open(tmp_path / "tiled.tif") as src:
        assert src.crs == "EPSG:32633" and src.transform.a == 10
    run(["predict", "--config", str(config_file(kind, tmp_path)), "--ckpt_path", str(ckpt)])
    predicted = generate.predictions(tmp_path / "run")
    assert sorted(predicted) == sorted(k for k in want if k.startswith("predict"))
    for name, array in predicted.items():
        assert_same(f"{kind} {name}", array, want[name])


@pytest.mark.parametrize("kind", [*GEO, *MEDICAL])
def test_test_gives_the_stored_metrics(kind, tmp_path):
    ckpt = LEGACY / f"{kind}.ckpt"
    run(["test", "--config", str(config_file(kind, tmp_path)), "--ckpt_path", str(ckpt)])
    record = json.loads(next((tmp_path / "run").rglob("test_metrics.json")).read_text())
    want = EXPECTED["test_metrics"][kind]
    assert sorted(record["metrics"]) == sorted(want)
    warn_if_not_exact(f"{kind} test metrics")
    for name, value in record["metrics"].items():
        if SAME_MACHINE:
            assert value == want[name] or (np.isnan(value) and np.isnan(want[name])), name
        else:
            assert value == pytest.approx(want[name], rel=1e-4, abs=1e-5, nan_ok=True), name


@pytest.mark.parametrize("kind", MEDICAL)
def test_volume_gives_the_stored_labels(kind, tmp_path):
    from densekit.medical import read_volume

    out = tmp_path / "labels.nii.gz"
    ckpt = LEGACY / f"{kind}.ckpt"
    run(["volume", "--checkpoint", str(ckpt), "--input", str(generate.CT), "--output", str(out)])
    got = read_volume(out).array
    assert_same(f"{kind} volume", got, np.load(LEGACY / f"{kind}.npz")["volume"])
