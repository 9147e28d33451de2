"""Learning-rate (and other hyper-parameter) schedules over training steps, as plain functions
of the step: the tasks' warm-up then decay, and pretraining's cosines."""

from __future__ import annotations

import math
from typing import Literal

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
