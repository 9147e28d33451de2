"""Learning-rate (and other hyper-parameter) schedules over training steps, as plain functions
of the step: the tasks' warm-up then decay, and pretraining's cosines."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from densekit.errors import DensekitError

Decay = Literal["cosine", "poly", "constant"]


def cosine_decay(progress: float) -> float:
    """Half a cosine: 1 at ``progress`` 0, 0 at ``progress`` 1."""
    return 0.5 * (1 + math.cos(math.pi * progress))


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Cosine from ``start`` (step 0) to ``end`` (step ``total``), then ``end``."""
    if total <= 0 or step >= total:
        return end
    return end + (start - end) * cosine_decay(step / total)


def warmup_then_decay(step: int, warmup: int, total: int, decay: Decay) -> float:
    """The factor of the base learning rate at ``step``: linear warm-up over ``warmup`` steps,
    then ``decay`` over the remaining steps up to ``total``: cosine to 0, polynomial
    (power 0.9) to 0, or constant."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    if decay == "cosine":
        return cosine_decay(progress)
    if decay == "poly":
        return (1 - progress) ** 0.9
    return 1.0


def step_schedule(decay: Decay, warmup_steps: int, total_steps: float) -> Callable[[int], float]:
    """The learning-rate factor of each optimizer step of a run of ``total_steps`` steps (what
    Lightning estimates; infinite for a run limited only by time, where only a constant
    schedule can apply)."""
    if not math.isfinite(total_steps) and decay != "constant":
        raise DensekitError(
            f"model.schedule {decay!r} decays over the run's steps, but this run has no "
            "step count (trainer.max_epochs -1 and no trainer.max_steps; trainer.max_time "
            "does not give one): set trainer.max_steps or trainer.max_epochs, or use "
            "schedule: constant"
        )
    total = max(int(total_steps), 1) if math.isfinite(total_steps) else warmup_steps
    warmup = min(warmup_steps, total)
    return lambda step: warmup_then_decay(step, warmup, total, decay)
