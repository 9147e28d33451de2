"""What every quickstart domain shares: numbered progress lines, the Lightning commands, writes
that appear complete or not at all, and the run's checkpoint and test metrics."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from densekit.errors import DensekitError
from densekit.io import atomic_outputs

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


class Steps:
    """Numbered progress lines with the time each step took."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.total = total
        self.n = 0
        self.t0 = self.tic = time.perf_counter()
        self.times: dict[str, float] = {}

    def start(self, what: str) -> None:
        self.n += 1
        self.what = what
        self.tic = time.perf_counter()
        self.console.print(f"[bold]\\[{self.n}/{self.total}][/] {what}")

    def done(self, result: str = "") -> None:
        dt = time.perf_counter() - self.tic
        self.times[self.what] = round(dt, 2)
        self.console.print(f"      {result}{' ' if result else ''}[dim]({dt:.1f} s)[/]")


def lightning(argv: list[str]) -> None:
    """Run a Lightning command; its errors reach the user as they are."""
    from densekit.commands.lightning import run_lightning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_lightning(argv)


def write_yaml(path: Path, doc: dict[str, Any], header: str) -> None:
    text = header + yaml.safe_dump(doc, sort_keys=False, width=100)
    atomic_outputs({path: lambda tmp: tmp.write_text(text)})


def copy_file(src: Path, dest: Path) -> None:
    atomic_outputs({dest: lambda tmp: shutil.copyfile(src, tmp)})


def last_checkpoint(run: Path) -> Path:
    """The last epoch's checkpoint: ``last.ckpt`` (else the newest, for a config that names its
    own checkpoint callback)."""
    found = sorted(run.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    found = found or sorted(run.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise DensekitError(f"training wrote no checkpoint under {run}")
    return found[-1]


def test_metrics(run: Path) -> dict[str, Any]:
    found = sorted(run.rglob("test_metrics.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise DensekitError(f"testing wrote no test_metrics.json under {run}")
    return dict(json.loads(found[-1].read_text()))


def trainer_settings(out: Path, epochs: int, log_every: int) -> dict[str, Any]:
    return {
        "max_epochs": epochs,
        "log_every_n_steps": log_every,
        "default_root_dir": str(out / "run"),
        "logger": False,
    }
