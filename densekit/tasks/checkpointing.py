"""The checkpoints and logs a ``densekit fit`` run keeps unless its config names its own.

* ``checkpoints/last.ckpt``, rewritten after every training epoch (resume with
  ``--ckpt_path .../last.ckpt``);
* ``checkpoints/best-epoch=E-<metric>=V.ckpt``: the best epoch on the task's main validation
  metric (``miou`` for segmentation, ``f1`` for change, ``rmse`` for depth), its name and value
  in the file name; only ``last.ckpt`` when the data has no validation part;
* TensorBoard event files and ``metrics.csv`` in the same ``lightning_logs/version_N`` folder.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from densekit.heads.grid import LOWER_IS_BETTER


class BestAndLast(ModelCheckpoint):
    """``last.ckpt`` and the best checkpoint on ``val/<metric>`` (see the module docstring).

    Args:
        metric: the task's main validation metric, e.g. ``miou``; None: ``last.ckpt`` only
            (a module without one, e.g. DINO pretraining).
    """

    def __init__(self, metric: str | None) -> None:
        self.metric = metric
        super().__init__(
            monitor=f"val/{metric}" if metric else None,
            mode="min" if metric in LOWER_IS_BETTER else "max",
            filename=f"best-epoch={{epoch}}-{metric}={{val/{metric}:.4f}}" if metric else None,
            auto_insert_metric_name=False,
            save_last=True,
            save_top_k=1 if metric else 0,
        )

    # Lightning writes last.ckpt only when a best checkpoint was written at the same step; it
    # is written here after every epoch (and every validation), whatever the score
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_unless_saved(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_unless_saved(trainer)

    def _save_last_unless_saved(self, trainer: L.Trainer) -> None:
        # skipped while sanity checking, in fast_dev_run, and when this step was saved already
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datasets = getattr(getattr(trainer, "datamodule", None), "datasets", None)
        if stage == "fit" and isinstance(datasets, dict) and "val" not in datasets:
            self.monitor, self.save_top_k = None, 0  # nothing to rank on: last.ckpt only
        super().setup(trainer, pl_module, stage)


def default_loggers(root: str) -> list[Logger]:
    """TensorBoard and CSV loggers writing into one ``<root>/lightning_logs/version_N``."""
    csv = CSVLogger(save_dir=root, name="lightning_logs")
    tensorboard = TensorBoardLogger(
        save_dir=root, name="lightning_logs", version=csv.version, default_hp_metric=False
    )
    return [csv, tensorboard]  # CSV first: it refuses a folder that is not empty


def has_checkpoint(callbacks: Any) -> bool:
    """Whether the config's ``trainer.callbacks`` already hold a ModelCheckpoint."""
    items = callbacks if isinstance(callbacks, list) else [callbacks] if callbacks else []
    return any(isinstance(c, ModelCheckpoint) for c in items)
