"""Lightning's messages that a densekit user cannot act on, silenced for one run.

Kept: every warning about the user's own settings (too few data loader workers, RANDOM
weights, ...). Silenced:

* "Found N module(s) in eval mode": the frozen backbone is in eval mode on purpose;
* "The number of training batches (N) is smaller than the logging interval": densekit logs
  every metric per epoch, so a short epoch loses nothing;
* the deprecation of ``LeafSpec`` Lightning itself triggers on recent torch versions;
* Lightning's advertising tips (litlogger, litmodels), its "GPU available" banners and its
  note on loading the training data to count the steps.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

NOT_ACTIONABLE = (
    r".*module\(s\) in eval mode.*",
    r".*number of training batches .* is smaller than the logging interval.*",
    r".*treespec.*LeafSpec.*|.*LeafSpec.*treespec.*",
)
LOGGERS = ("lightning.pytorch", "lightning.fabric")
BANNERS = (
    "💡",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Loading `train_dataloader` to estimate",
)


class _DropBanners(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(BANNERS)


@contextlib.contextmanager
def quiet_lightning(info: bool = True) -> Iterator[None]:
    """Silence the messages listed in the module's docstring while the block runs.

    Args:
        info: keep Lightning's other information lines ("Seed set to 0", ...); False keeps only
            its warnings and errors (the benchmark prints its own line per run).
    """
    drop = _DropBanners()
    loggers = [logging.getLogger(n) for n in LOGGERS]
    levels = [logger.level for logger in loggers]
    handlers = [h for logger in loggers for h in logger.handlers]
    for logger in loggers:
        logger.addFilter(drop)
        if not info:
            logger.setLevel(logging.WARNING)
    for handler in handlers:
        handler.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for pattern in NOT_ACTIONABLE:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeFilter(drop)
            logger.setLevel(level)
        for handler in handlers:
            handler.removeFilter(drop)
