"""A full disk (an injected ``ENOSPC`` in the middle of a write) during ``volume`` (NIfTI gzip,
DICOM SEG), ``predict``, ``stats`` and the ``pretrain`` export: one line, exit status 1, and at
the output path either nothing or the previous complete output; no temporary file is left."""

from __future__ import annotations

import errno
import gzip
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from helpers import needs_shared_data
from robust_cases import LEGACY, generate, one_line

from densekit.cli import main

FULL = OSError(errno.ENOSPC, "No space left on device")


def fail_after_some_bytes(monkeypatch, cls, method: str = "write") -> None:
    """``cls.method`` writes its first call's bytes, then fails as a full disk does."""
    original = getattr(cls, method)
    calls = {"n": 0}

    def write(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, write)


def left_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def ct_nifti(path: Path) -> Path:
    data = np.linspace(-200, 300, 32 * 32 * 4, dtype=np.float32).reshape(32, 32, 4)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])), path)
    return path


def volume_argv(src: Path, out: Path) -> list[str]:
    return ["volume", "--checkpoint", "unused.ckpt", "--input", str(src), "--output", str(out),
            "--no-progress"]  # fmt: skip


def test_volume_nifti_gzip_on_a_full_disk_keeps_the_previous_output(
    tmp_path, capsys, threshold, monkeypatch
):
    src = ct_nifti(tmp_path / "ct.nii.gz")
    out = tmp_path / "seg.nii.gz"
    assert main(volume_argv(src, out)) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in (out, tmp_path / "seg.nii.gz.metrics.json")}
    fail_after_some_bytes(monkeypatch, gzip.GzipFile)
    code, line = one_line(capsys, volume_argv(src, out))
    assert code == 1
    assert line == f"densekit volume: error: {out}: no space left on device"
    assert {p: p.read_bytes() for p in before} == before  # the previous complete pair
    assert left_files(tmp_path) == ["ct.nii.gz", "seg.nii.gz", "seg.nii.gz.metrics.json"]


def test_volume_seg_on_a_full_disk_writes_nothing(tmp_path, capsys, threshold, monkeypatch):
    import pydicom

    src = needs_shared_data("dicom-seg-ct-dcmqi", "ct-3slice")
    out = tmp_path / "seg.dcm"
    original = pydicom.Dataset.save_as

    def half_then_full(self, filename, *args, **kwargs):
        original(self, filename, *args, **kwargs)
        with open(filename, "r+b") as f:
            f.truncate(Path(filename).stat().st_size // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pydicom.Dataset, "save_as", half_then_full)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, line = one_line(capsys, volume_argv(src, out))
    assert code == 1 and line == f"densekit volume: error: {out}: no space left on device"
    assert left_files(tmp_path) == []


def test_stats_on_a_full_disk(tmp_path, capsys, monkeypatch):
    out = tmp_path / "stats.yaml"
    out.write_text("previous: 1\n")

    def half_then_full(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    code, line = one_line(capsys, ["stats", str(LEGACY / "inputs" / "a.tif"), "--out", str(out)])
    monkeypatch.undo()
    assert code == 1 and line == f"densekit stats: error: {out}: no space left on device"
    assert out.read_text() == "previous: 1\n"
    assert left_files(tmp_path) == ["stats.yaml"]


def test_predict_on_a_full_disk_leaves_no_partial_tile(tmp_path, capsys, monkeypatch):
    import rasterio.io

    doc = generate.config("seg_linear", tmp_path / "run")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    original = rasterio.io.DatasetWriter.write

    def full(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", full)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, line = one_line(
            capsys,
            ["predict", "--config", str(config), "--ckpt_path", str(LEGACY / "seg_linear.ckpt")],
        )
    assert code == 1
    assert line.startswith("densekit predict: error: ") and "no space left on device" in line
    assert ".tif" in line and "partial" not in line
    predictions = tmp_path / "run" / "predictions"
    assert not predictions.exists() or left_files(predictions) == []


def test_pretrain_export_on_a_full_disk_keeps_the_previous_pair(tmp_path, monkeypatch):
    import json

    import torch

    from densekit.pretrain import DinoPretrainTask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = DinoPretrainTask(
            backbone="dinov2_vits14",
            weights="random",
            arch={"embed_dim": 32, "depth": 2, "num_heads": 2},
            out_dim=64,
            hidden_dim=32,
            bottleneck_dim=16,
            export_path=str(tmp_path / "export" / "b.pth"),
        )
    path = task.export()
    before = {p: p.read_bytes() for p in (path, path.with_name("card.json"))}
    with torch.no_grad():
        task.mask_token.normal_()

    def full(self, text, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError) as err:
        task.export()
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(
        path.with_name("card.json")
    )
    assert {p: p.read_bytes() for p in before} == before
    assert left_files(path.parent) == ["b.pth", "card.json"]
    assert json.loads(before[path.with_name("card.json")])["sha256"]


@pytest.mark.slow
def test_the_quickstart_on_a_full_disk_leaves_no_stale_or_half_written_output(
    tmp_path, capsys, monkeypatch
):
    """A second quickstart into the same folder whose disk fills while it draws the overview:
    exit 1, the last line names overview.png and the full disk. The quickstart clears the
    earlier run's outputs when it starts (no stale result beside new ones), so the pictures and
    metrics.json are absent, not half-written; what it wrote before the failure is complete;
    no temporary file is left anywhere."""
    import rasterio
    import torch
    from matplotlib.figure import Figure

    out = tmp_path / "qs"
    argv = ["quickstart", "--out", str(out), "--epochs", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    assert (out / "overview.png").is_file() and (out / "metrics.json").is_file()
    capsys.readouterr()
    original = Figure.savefig

    def half_then_full(self, fname, *args, **kwargs):
        original(self, fname, *args, **kwargs)
        with open(fname, "r+b") as f:
            f.truncate(Path(fname).stat().st_size // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_then_full)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(argv)
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"densekit quickstart: error: {out / 'overview.png'}: no space left on device"
    )
    assert "Traceback" not in err
    for name in ("overview.png", "features_pca.png", "metrics.json"):
        assert not (out / name).exists(), name
    with rasterio.open(out / "prediction.tif") as pred:  # written before the disk filled
        assert pred.read(1).shape == (pred.height, pred.width)
    assert torch.load(out / "model.ckpt", map_location="cpu", weights_only=True)["densekit"]
    assert not [p for p in out.rglob("*") if ".partial" in p.name]
