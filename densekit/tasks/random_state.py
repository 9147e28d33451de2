"""The random generators' state, kept in a checkpoint so that a resumed fit draws what an
uninterrupted one would have drawn.

Lightning restores the model, optimizer, scheduler and loop counters from a checkpoint, but not
the random generators: a fit resumed from an epoch's checkpoint would shuffle, augment, draw
random windows and drop out as right after seeding, not as the uninterrupted fit went on
(its head weights differed by up to 0.16). The task writes the state of Python's, NumPy's
and torch's generators (CPU and CUDA) into every checkpoint (:func:`capture_random_state`) and
sets them back when a checkpoint is loaded (:func:`restore_random_state`), before Lightning
makes the first batch of the resumed fit. Augmentations draw from torch's generator
(:func:`densekit.data.augment.apply`).

Exact for any ``num_workers``: each training sample draws from a generator seeded by the
main process (:mod:`densekit.data.seeded`), never from a worker's own. A checkpoint written
within an epoch resumes that epoch's data from its start, as Lightning does.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from densekit.errors import DensekitError

RANDOM_STATE = "densekit_random_state"


def capture_random_state() -> dict[str, Any]:
    """The generators' state, in types ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict[str, Any], where: str) -> None:
    """Set the generators to ``state`` (from :func:`capture_random_state`).

    Raises:
        DensekitError: a state that is not what :func:`capture_random_state` writes, naming
            ``where``.
    """
    try:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
        cuda = state.get("cuda")
        if (
            cuda is not None
            and torch.cuda.is_available()
            and len(cuda) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(cuda)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise DensekitError(
            f"{where}: its {RANDOM_STATE} is damaged ({type(e).__name__}: {e})"
        ) from None
