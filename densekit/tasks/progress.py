"""Training progress: Lightning's rich bar in a terminal, plain lines elsewhere.

Outside a terminal (``nohup``, a job system, a pipe) :class:`PlainProgressBar` writes one line
at most every ``DENSEKIT_PROGRESS_SECONDS`` seconds (default 20; repeated by a heartbeat when a
step is slower), at the end of an epoch with its validation metrics when one is due, and at the
end of the last epoch and of a test, e.g.::

    densekit fit: epoch 3/30, step 40/120 (33%), train/loss_step 0.412, elapsed 0:01:10, ETA 0:18:30
    densekit fit: epoch 3/30 done, val/miou 0.4312, val/loss 0.38, elapsed 0:01:32, ETA 0:17:56
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from densekit.progress import Heartbeat, clock, in_terminal, interval_seconds


def _value(v: Any) -> str:
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return str(v)


class PlainProgressBar(ProgressBar):
    """Progress of fit, validate, test and predict as plain lines on stderr.

    Args:
        prefix: the start of every line, e.g. ``"densekit fit: "`` or a benchmark run's id.
        interval: seconds between lines (default: ``DENSEKIT_PROGRESS_SECONDS`` or 20).
    """

    def __init__(self, prefix: str = "", interval: float | None = None) -> None:
        super().__init__()
        self.prefix = prefix
        self.interval = interval_seconds() if interval is None else interval
        self._enabled = True
        self._state = ""
        self._start = time.monotonic()
        self._stage_start = self._start
        self.heartbeat = Heartbeat(self._repeat, self.interval)
        self._lock = threading.Lock()

    # Lightning asks every progress bar for these
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def say(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            with self._lock:  # the heartbeat's thread says things too: whole lines only
                self.heartbeat.beat()
                sys.stderr.write(f"{self.prefix}{text}\n")
                sys.stderr.flush()

    def _repeat(self) -> None:
        if self._state:
            self.say(f"{self._state}, elapsed {clock(time.monotonic() - self._start)} (running)")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._start = time.monotonic()
        self.heartbeat.start()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.heartbeat.stop()
        self._state = ""

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.heartbeat.stop()

    def _metrics(self, keep: tuple[str, ...]) -> str:
        metrics = self.trainer.progress_bar_metrics | {
            k: v for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")
        }
        found = [
            f"{k} {_value(v)}" for k, v in metrics.items() if k.startswith(keep) and k != "v_num"
        ]
        return ", ".join(found)

    def _eta(self, trainer: L.Trainer, batch: int, batches: float) -> float:
        """Seconds left in the fit at the pace of this epoch (validation left out)."""
        elapsed = time.monotonic() - self._stage_start
        if batch <= 0 or not math.isfinite(batches) or elapsed <= 0:
            return math.inf
        per_batch = elapsed / batch
        epochs_after = (trainer.max_epochs or 1) - trainer.current_epoch - 1
        if trainer.max_steps and trainer.max_steps > 0:
            steps_left = trainer.max_steps - trainer.global_step
            return max(steps_left, 0) * per_batch * trainer.accumulate_grad_batches
        return per_batch * ((batches - batch) + max(epochs_after, 0) * batches)

    def _epoch(self, trainer: L.Trainer) -> str:
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        return f"epoch {trainer.current_epoch + 1}/{total}"

    # -- training ------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stage_start = time.monotonic()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        batches = self.total_train_batches
        known = math.isfinite(batches) and batches > 0  # 0 after the last step of max_steps
        shown = f"/{batches:.0f} ({100 * (i + 1) / batches:.0f}%)" if known else ""
        metrics = self._metrics(("train/",))
        self._state = ", ".join(
            p for p in (f"{self._epoch(trainer)}, step {i + 1}{shown}", metrics) if p
        )
        if self.heartbeat.due():
            eta = clock(self._eta(trainer, i + 1, batches))
            self.say(f"{self._state}, elapsed {clock(time.monotonic() - self._start)}, ETA {eta}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._state = f"after {self._epoch(trainer)}"
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if not (self.heartbeat.due() or last):  # short epochs: a line per interval, not each
            return
        batches = self.total_train_batches
        known = math.isfinite(batches) and batches > 0
        eta = clock(self._eta(trainer, int(batches), batches)) if known else "?"
        metrics = self._metrics(("val/", "train/loss"))
        self.say(
            ", ".join(p for p in (f"{self._epoch(trainer)} done", metrics) if p)
            + f", elapsed {clock(time.monotonic() - self._start)}, ETA {eta}"
        )

    # -- validation, test and predict -------------------------------------------------------
    def _evaluation(self, stage: str, i: int, total: float) -> None:
        shown = f"/{total:.0f}" if math.isfinite(total) and total > 0 else ""
        self._state = f"{stage} batch {i + 1}{shown}"
        if self.heartbeat.due():
            self.say(f"{self._state}, elapsed {clock(time.monotonic() - self._start)}")

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._evaluation("validating", batch_idx, trainer.num_val_batches[dataloader_idx])

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._evaluation("testing", batch_idx, trainer.num_test_batches[dataloader_idx])

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.say(f"test done, elapsed {clock(time.monotonic() - self._start)}")

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._evaluation("predicting", batch_idx, trainer.num_predict_batches[dataloader_idx])


def progress_callback(prefix: str) -> ProgressBar:
    """Lightning's rich bar in a terminal, else :class:`PlainProgressBar` lines."""
    if in_terminal():
        return RichProgressBar()
    return PlainProgressBar(prefix)


def has_progress_bar(callbacks: list[Any]) -> bool:
    """Whether the config's callbacks already hold a progress bar."""
    return any(isinstance(c, ProgressBar) for c in callbacks)
