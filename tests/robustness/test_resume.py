"""A fit resumed from a checkpoint written part-way ends with the weights of an uninterrupted
fit: the random generators' state is kept in the checkpoint (shuffling, augmentation and
dropout draw on), and the interrupted run has the full run's schedule."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from robust_cases import generate

from densekit.cli import main


def config(root: Path, name: str, stop_after: int | None = None, workers: int = 0) -> str:
    """4 epochs of the legacy segmentation run with dropout and every augmentation;
    ``stop_after``: the run is interrupted after that epoch (its checkpoint written)."""
    doc = generate.config("seg_linear", root / name)
    trainer = doc["trainer"]
    trainer.pop("max_steps")
    trainer["max_epochs"] = 4
    if stop_after is not None:
        trainer["callbacks"] = [
            {"class_path": "robust_cases.StopAfterEpoch", "init_args": {"epoch": stop_after}}
        ]
    doc["model"]["init_args"]["dropout"] = 0.2
    data = doc["data"]["init_args"]
    data.update(
        batch_size=2,
        num_workers=workers,
        augment={"hflip": 0.5, "vflip": 0.5, "rotate90": 0.5, "gain": 0.1},
    )
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def head_weights(folder: Path) -> dict[str, torch.Tensor]:
    (last,) = folder.rglob("last.ckpt")  # the end of the run (beside the best epoch's)
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if ".head." in k or k.startswith("head.")}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_fit_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, workers):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["fit", "--config", config(tmp_path, "full", workers=workers)]) == 0
        cut_config = config(tmp_path, "cut", stop_after=1, workers=workers)
        assert main(["fit", "--config", cut_config]) == 0
        (cut,) = (tmp_path / "cut").rglob("last.ckpt")
        assert torch.load(cut, map_location="cpu", weights_only=True)["epoch"] == 1
        resumed = config(tmp_path, "resumed", workers=workers)
        assert main(["fit", "--config", resumed, "--ckpt_path", str(cut)]) == 0
    full, resumed, interrupted = (head_weights(tmp_path / n) for n in ("full", "resumed", "cut"))
    assert full.keys() == resumed.keys() and full
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=1e-5, atol=1e-6, msg=key)
    # the control: the interrupted run's weights are not the end result
    assert any(not torch.allclose(interrupted[k], full[k]) for k in full)


@pytest.mark.slow
def test_workers_draw_what_the_main_process_draws(tmp_path):
    """Augmentations, dropout and shuffling give the same weights with 0 or 2 DataLoader
    workers: every sample's random draws are seeded by the main process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for workers in (0, 2):
            assert main(["fit", "--config", config(tmp_path, f"w{workers}", workers=workers)]) == 0
    alone, with_workers = head_weights(tmp_path / "w0"), head_weights(tmp_path / "w2")
    assert alone.keys() == with_workers.keys() and alone
    for key in alone:
        torch.testing.assert_close(with_workers[key], alone[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_sigterm_ends_fit_promptly_naming_the_checkpoint_to_resume_from(tmp_path):
    """``densekit fit`` under a job system's SIGTERM: exit 143 within seconds, one line naming
    the last checkpoint and the command that resumes; resuming from it runs to the end."""
    import signal
    import subprocess
    import sys
    import time

    doc = yaml.safe_load(Path(config(tmp_path, "long")).read_text())
    doc["trainer"]["max_epochs"] = 10_000  # minutes of training unless stopped
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    tests = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{tests}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "densekit.cli", "fit", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((tmp_path / "long").rglob("last.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # into a later epoch
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    assert time.monotonic() - sent < 20
    last_line = (proc.stderr.read() if proc.stderr else "").strip().splitlines()[-1]
    assert code == 143, last_line
    (last,) = (tmp_path / "long").rglob("last.ckpt")
    assert last_line.startswith(f"densekit fit: stopped by SIGTERM; kept {last}; resume with: "
                                f"densekit fit --config {path} --ckpt_path {last}"), last_line  # fmt: skip
    epoch = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    doc["trainer"]["max_epochs"] = epoch + 2
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["fit", "--config", str(path), "--ckpt_path", str(last)]) == 0
