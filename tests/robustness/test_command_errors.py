"""Errors the user causes end every command with one line and the right exit status: bad,
malicious, truncated and incomplete checkpoints, option values that cannot work (refused
before any model is built), and ``--debug`` / ``DENSEKIT_DEBUG=1`` for the traceback."""

from __future__ import annotations

import os
import pickle
import subprocess

import pytest
import torch
import yaml
from helpers import REPO, TEST_DATA
from robust_cases import generate, one_line

from densekit.cli import main

LEGACY = TEST_DATA / "checkpoints_v0"


class Exploit:
    """Pickles as a call of ``os.system`` that would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def seg_config(tmp_path, **model_args) -> str:
    """The legacy fixtures' segmentation config (tiny random backbone) with ``model_args``."""
    doc = generate.config("seg_linear", tmp_path / "run")
    doc["model"]["init_args"].update(model_args)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


# -- checkpoints -----------------------------------------------------------------------------
def test_a_malicious_pickle_as_ckpt_path_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    torch.save({"state_dict": Exploit(str(marker))}, tmp_path / "evil.ckpt")
    for command in ("test", "validate"):
        code, line = one_line(
            capsys,
            [command, "--config", seg_config(tmp_path), "--ckpt_path", str(tmp_path / "evil.ckpt")],
        )
        assert code == 2
        assert line.startswith(f"densekit {command}: error: checkpoint {tmp_path / 'evil.ckpt'}")
        assert "not a densekit checkpoint, refused: it contains executable objects" in line
        assert "GLOBAL posix.system" in line
    assert not marker.exists()


def test_a_malicious_pickle_as_resume_checkpoint_is_refused(tmp_path, capsys):
    marker = tmp_path / "ran"
    with open(tmp_path / "evil.ckpt", "wb") as f:
        pickle.dump({"state_dict": Exploit(str(marker))}, f, protocol=2)
    code, line = one_line(
        capsys,
        ["fit", "--config", seg_config(tmp_path), "--ckpt_path", str(tmp_path / "evil.ckpt")],
    )
    assert code == 2 and "refused: it contains executable objects" in line
    assert not marker.exists()
    assert not list(tmp_path.rglob("*.ckpt"))[1:]  # no checkpoint written besides the given one


def test_a_truncated_checkpoint_is_named_damaged(tmp_path, capsys):
    data = (LEGACY / "seg_linear.ckpt").read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    code, line = one_line(
        capsys, ["test", "--config", seg_config(tmp_path), "--ckpt_path", str(cut)]
    )
    assert code == 2
    assert f"checkpoint {cut}: damaged: the file is truncated or corrupted" in line
    code, line = one_line(
        capsys,
        ["tile", "--checkpoint", str(cut), "--input", str(LEGACY / "inputs" / "a.tif"),
         "--output", str(tmp_path / "o.tif"), "--no-progress"],
    )  # fmt: skip
    assert code == 2 and "damaged" in line and not (tmp_path / "o.tif").exists()


def test_an_empty_checkpoint_and_a_folder(tmp_path, capsys):
    (tmp_path / "empty.ckpt").write_bytes(b"")
    code, line = one_line(
        capsys,
        ["test", "--config", seg_config(tmp_path), "--ckpt_path", str(tmp_path / "empty.ckpt")],
    )
    assert code == 2 and "empty.ckpt: the file is empty" in line
    code, line = one_line(
        capsys, ["test", "--config", seg_config(tmp_path), "--ckpt_path", str(tmp_path)]
    )
    assert code == 2 and "is a folder, not a file" in line


def test_a_checkpoint_missing_a_head_tensor(tmp_path, capsys):
    stored = torch.load(LEGACY / "seg_linear.ckpt", map_location="cpu", weights_only=True)
    key = next(k for k in stored["state_dict"] if "head" in k and k.endswith("weight"))
    del stored["state_dict"][key]
    torch.save(stored, tmp_path / "nohead.ckpt")
    code, line = one_line(
        capsys,
        ["test", "--config", seg_config(tmp_path), "--ckpt_path", str(tmp_path / "nohead.ckpt")],
    )
    assert code == 2, line
    assert "nohead.ckpt" in line and "missing" in line and "head" in line


def test_a_checkpoint_of_another_task(tmp_path, capsys):
    code, line = one_line(
        capsys,
        ["test", "--config", seg_config(tmp_path), "--ckpt_path", str(LEGACY / "depth_bins.ckpt")],
    )
    assert code == 2
    assert "a checkpoint of a DepthTask, but the config's model is a SegmentationTask" in line


# -- option values, before any model is built -------------------------------------------------
# A weights file that does not exist: an error about the option proves it came first.
NO_WEIGHTS = {"backbone": "dinov2_vits14", "weights": "/nonexistent/w.pth"}


@pytest.mark.parametrize(
    ("model_args", "data_args", "message"),
    [
        ({"lr": float("nan")}, {}, r"model.lr nan: give a finite learning rate > 0"),
        ({"lr": -0.01}, {}, r"model.lr -0.01: give a finite learning rate > 0"),
        ({"lr": 0.0}, {}, r"model.lr 0.0: give a finite learning rate > 0"),
        ({"weight_decay": -1.0}, {}, r"model.weight_decay -1.0: give a finite number >= 0"),
        ({"dropout": 1.0}, {}, r"model.dropout 1.0: give a number in \[0, 1\)"),
        ({}, {"batch_size": 0}, r"data.batch_size 0: give a whole number >= 1"),
        ({}, {"batch_size": -2}, r"data.batch_size -2: give a whole number >= 1"),
        ({}, {"num_workers": -1}, r"data.num_workers -1: give a whole number >= 0"),
        ({}, {"window": 5000}, r"data.window 5000: more than 4 times the longer side of .*give at most"),
    ],
    ids=["lr nan", "lr negative", "lr zero", "weight decay", "dropout", "batch 0", "batch -2",
         "workers", "window"],
)  # fmt: skip
def test_option_values_are_refused_before_the_model_is_built(
    tmp_path, capsys, model_args, data_args, message
):
    import re

    doc = generate.config("seg_linear", tmp_path / "run")
    doc["model"]["init_args"].update({**NO_WEIGHTS, **model_args})
    doc["model"]["init_args"].pop("backbone_overrides", None)
    doc["data"]["init_args"].update(data_args)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, line = one_line(capsys, ["fit", "--config", str(path)])
    assert code == 2
    assert re.search(message, line), line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--batch-size", "0", "batch_size 0: give a whole number >= 1"),
        ("--batch-size", "-2", "batch_size -2: give a whole number >= 1"),
        ("--tile", "0", "tile 0: give a whole number >= 1"),
        ("--overlap", "-1", "overlap -1: give a whole number >= 0"),
        ("--overlap", "56", "overlap 56: must be >= 0 and less than half of 56"),
    ],
)
def test_tile_options_are_refused_and_nothing_is_written(tmp_path, capsys, flag, value, message):
    out = tmp_path / "o.tif"
    argv = ["tile", "--checkpoint", str(LEGACY / "seg_linear.ckpt"), "--input",
            str(LEGACY / "inputs" / "a.tif"), "--output", str(out), "--tile", "56",
            "--no-progress", flag, value]  # fmt: skip
    code, line = one_line(capsys, argv)
    assert code == 2 and line == f"densekit tile: error: {message}"
    assert list(tmp_path.iterdir()) == []  # no .partial folder either


def test_volume_batch_size_zero(tmp_path, capsys):
    out = tmp_path / "o.nii.gz"
    argv = ["volume", "--checkpoint", str(LEGACY / "medical_linear.ckpt"), "--input",
            str(REPO / "densekit" / "samples" / "dcmqi_liver" / "ct"), "--output", str(out),
            "--batch-size", "0", "--no-progress"]  # fmt: skip
    code, line = one_line(capsys, argv)
    assert code == 2 and "batch_size 0" in line and ">= 1" in line
    assert list(tmp_path.iterdir()) == []


# -- the traceback on request ----------------------------------------------------------------
def text_checkpoint_argv(tmp_path) -> list[str]:
    (tmp_path / "text.ckpt").write_text("hello")
    return ["tile", "--checkpoint", str(tmp_path / "text.ckpt"), "--input",
            str(LEGACY / "inputs" / "a.tif"), "--output", str(tmp_path / "o.tif")]  # fmt: skip


def test_debug_raises_the_error_with_its_traceback(tmp_path, capsys, monkeypatch):
    from densekit.errors import DensekitError

    argv = text_checkpoint_argv(tmp_path)
    monkeypatch.setenv("DENSEKIT_DEBUG", "0")
    code, line = one_line(capsys, argv)
    assert code == 2 and "text.ckpt: not a readable PyTorch checkpoint" in line
    with pytest.raises(DensekitError, match=r"text\.ckpt"):
        main(["--debug", *argv])
    monkeypatch.setenv("DENSEKIT_DEBUG", "1")
    with pytest.raises(DensekitError, match=r"text\.ckpt"):
        main(argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.ckpt"]


@pytest.mark.slow
def test_debug_through_the_console_script(tmp_path):
    argv = text_checkpoint_argv(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "DENSEKIT_DEBUG"}
    quiet = subprocess.run(["densekit", *argv], capture_output=True, text=True, env=env)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert quiet.stderr.count("\n") == 1, quiet.stderr
    loud = subprocess.run(["densekit", "--debug", *argv], capture_output=True, text=True, env=env)
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "DensekitError" in loud.stderr
