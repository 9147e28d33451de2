"""Helpers of the robustness tests (``tests/robustness``): a command's one stderr line, the
legacy checkpoints' generator (configs of their runs), and a threshold model for volume
inference that needs no checkpoint."""

from __future__ import annotations

import importlib.util
import warnings
from types import ModuleType

import lightning as L
from helpers import TEST_DATA

LEGACY = TEST_DATA / "checkpoints_v0"
NAMES = ["background", "soft", "bright"]


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


def threshold_model():
    """A 3-class :class:`~densekit.inference.volume.VolumeModel` thresholding the windowed
    centre channel (no checkpoint needed)."""
    import torch

    from densekit.inference.trained import Trained
    from densekit.inference.volume import VolumeModel
    from densekit.medical.slices import Intensity, SliceSettings
    from densekit.models import InputSpec, OutputSpec

    class Threshold(torch.nn.Module):
        def forward(self, x):
            c = x[:, 1]
            return torch.stack([0.5 - c, c - 0.5, 2 * (c - 0.9) + c - 0.5], dim=1)

    settings = SliceSettings("axial", 0, Intensity(ct_window="soft_tissue"))
    trained = Trained(
        model=Threshold(),
        output=OutputSpec.segmentation(3, NAMES),
        inputs=InputSpec(3, 1, None, (0.0,) * 3, (1.0,) * 3, 1.0),
        checkpoint_sha256="0" * 64,
    )
    model = VolumeModel(trained, settings)
    model.provenance = lambda: {  # type: ignore[method-assign]
        "backbone": "threshold",
        "head": "none",
        "plane": "axial",
        "context": 0,
        "checkpoint_sha256": "0" * 64,
    }
    return model


class StopAfterEpoch(L.Callback):
    """Ends a fit after epoch ``epoch`` (0-based) as an interruption would: the run's schedule
    and settings are those of the full run, and that epoch's checkpoint is written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= self.epoch:
            trainer.should_stop = True
