"""Intensity scaling of medical volumes to ``[0, 1]``, before the backbone's own normalisation.

* CT: a window of Hounsfield units, ``value = (hu - (level - width / 2)) / width`` clipped to
  ``[0, 1]`` (the linear window; DICOM's display formula differs only by half a grey level).
  Presets (level, width) in HU, as used in radiology teaching references:

  ============  =======  =======
  name          level    width
  ============  =======  =======
  soft_tissue       40      400
  lung            -600     1500
  bone             400     1800
  brain             40       80
  ============  =======  =======

  ``bone`` is the wide 400/1800 window (cortex and marrow both visible); the narrower 300/1500
  some sites use is ``ct_window(hu, (300, 1500))``.
* MR (and anything without physical units): percentiles over the foreground, ``lower`` -> 0 and
  ``upper`` -> 1, clipped.

Both accept numpy arrays and torch tensors and return the same type (float).
"""

from __future__ import annotations

from typing import Literal, TypeVar

import numpy as np
import torch

from densekit.errors import DensekitError, UnknownNameError

CTWindowName = Literal["soft_tissue", "lung", "bone", "brain"]
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def window_bounds(window: CTWindowName | str | tuple[float, float]) -> tuple[float, float]:
    """``(low, high)`` HU of a preset name or a ``(level, width)`` pair.

    Raises:
        UnknownNameError: an unknown preset name (the message lists the presets).
        DensekitError: a width that is not positive.
    """
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise UnknownNameError(
                f"unknown CT window {window!r}; presets: {', '.join(CT_WINDOWS)} "
                "(or give (level, width) in HU)"
            )
        level, width = CT_WINDOWS[window]
    else:
        level, width = (float(v) for v in window)
    if not width > 0:
        raise DensekitError(f"CT window width {width} HU: must be positive")
    return level - width / 2, level + width / 2


def ct_window(
    hu: ArrayT, window: CTWindowName | str | tuple[float, float] = "soft_tissue"
) -> ArrayT:
    """Hounsfield units -> ``[0, 1]`` through a window (a preset name or ``(level, width)``)."""
    low, high = window_bounds(window)
    if isinstance(hu, torch.Tensor):
        return ((hu.float() - low) / (high - low)).clamp(0.0, 1.0)
    return np.clip((np.asarray(hu, dtype=np.float32) - low) / (high - low), 0.0, 1.0)


def percentile_normalize(
    values: ArrayT,
    lower: float = 1.0,
    upper: float = 99.0,
    foreground: Literal["nonzero", "all"] | np.ndarray | torch.Tensor = "nonzero",
) -> ArrayT:
    """Scale so the ``lower`` percentile maps to 0 and the ``upper`` one to 1 (clipped).

    Args:
        values: a volume or image (MR signal, radiograph, ...).
        lower, upper: percentiles in ``[0, 100]``, ``lower < upper``.
        foreground: the voxels the percentiles are taken over: ``"nonzero"`` (MR background
            is usually 0 and would otherwise drag the lower percentile), ``"all"``, or a
            boolean mask of the same shape.

    Raises:
        DensekitError: bad percentiles, an empty foreground, or a foreground of one value.
    """
    if not 0 <= lower < upper <= 100:
        raise DensekitError(f"percentiles ({lower}, {upper}): need 0 <= lower < upper <= 100")
    data = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if isinstance(foreground, str):
        if foreground not in ("nonzero", "all"):
            raise DensekitError(f"foreground={foreground!r}: use 'nonzero', 'all' or a mask")
        mask = data != 0 if foreground == "nonzero" else np.ones(data.shape, dtype=bool)
    else:
        mask = np.asarray(
            foreground.detach().cpu().numpy()
            if isinstance(foreground, torch.Tensor)
            else foreground
        ).astype(bool)
        if mask.shape != data.shape:
            raise DensekitError(f"foreground mask of shape {mask.shape}, values {data.shape}")
    if not mask.any():
        raise DensekitError(
            f"empty foreground ({foreground if isinstance(foreground, str) else 'mask'})"
        )
    low, high = (float(v) for v in np.percentile(data[mask], [lower, upper]))
    if not high > low:
        raise DensekitError(
            f"percentiles {lower} and {upper} of the foreground are both {low}: nothing to scale"
        )
    if isinstance(values, torch.Tensor):
        return ((values.float() - low) / (high - low)).clamp(0.0, 1.0)
    return np.clip((data.astype(np.float32) - low) / (high - low), 0.0, 1.0)
