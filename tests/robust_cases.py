"""Helpers of the robustness tests (``tests/robustness``): a command's one stderr line, the
legacy checkpoints' generator (configs of their runs), and the threshold model of
:mod:`helpers` for volume inference that needs no checkpoint."""

from __future__ import annotations

import importlib.util
import warnings
from types import ModuleType

import lightning as L
from helpers import TEST_DATA, threshold_model

__all__ = ["LEGACY", "StopAfterEpoch", "generate", "one_line", "threshold_model"]

LEGACY = TEST_DATA / "checkpoints_v0"


def _legacy_generate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("legacy_generate", LEGACY / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _legacy_generate()


def one_line(capsys, argv: list[str]) -> tuple[int, str]:
    """``densekit ARGV`` in this process: the exit status and its one stderr line."""
    from densekit.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = main(argv)
        except SystemExit as e:
            code = int(e.code or 0)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and len(lines) == 1, err[-3000:]
    assert "Traceback" not in err
    return code, lines[0]


class StopAfterEpoch(L.Callback):
    """Ends a fit after epoch ``epoch`` (0-based) as an interruption would: the run's schedule
    and settings are those of the full run, and that epoch's checkpoint is written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= self.epoch:
            trainer.should_stop = True
