"""What ``densekit fit`` prints at its end: the validation metrics as a table, then where the
checkpoints and logs are and how to look at them."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from densekit.tables import print_table


def print_fit_summary(trainer: L.Trainer) -> None:
    """The last validation epoch's metrics, the best and last checkpoints, the log folder."""
    if not trainer.is_global_zero:
        return
    metrics = {
        k.removeprefix("val/"): float(v)
        for k, v in sorted(trainer.callback_metrics.items())
        if k.startswith("val/")
    }
    if metrics:
        rows = [[k, f"{v:.4f}" if math.isfinite(v) else str(v)] for k, v in metrics.items()]
        title = f"validation after epoch {trainer.current_epoch}"
        print_table(["metric", "value"], rows, title=title)
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if not isinstance(callback, ModelCheckpoint):
            continue
        if callback.best_model_path:
            score = callback.best_model_score
            shown = f" ({callback.monitor} {float(score):.4f})" if score is not None else ""
            print(f"best checkpoint: {callback.best_model_path}{shown}")
        if callback.last_model_path:
            print(f"last checkpoint: {callback.last_model_path}")
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and logger.log_dir:
            folder = Path(logger.log_dir)
            print(f"logs: {folder} (tensorboard --logdir {folder.parent})")
