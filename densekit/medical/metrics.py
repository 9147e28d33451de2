"""Dice and HD95 of a predicted label volume against a reference on the same grid.

Per foreground class ``c`` (class 0 is background and is not scored), with ``P`` the predicted
and ``R`` the reference voxels of ``c``:

* **Dice** ``2 |P & R| / (|P| + |R|)``; ``None`` when both are empty (undefined: nothing to
  find and nothing found).
* **HD95**: the symmetric 95th-percentile Hausdorff distance in millimetres between the
  boundary voxels of ``P`` and ``R`` (MONAI's ``compute_hausdorff_distance`` with
  ``percentile=95`` and the voxel ``spacing`` along the array axes); ``None`` when either is
  empty (no surface to measure from). With a sheared grid (gantry tilt) the axes are not
  orthogonal and the distance along them is an approximation.
* ``mean_dice`` / ``mean_hd95_mm``: macro means over the classes where the value is defined.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from densekit.errors import DensekitError


def dice(pred: np.ndarray, ref: np.ndarray) -> float | None:
    """Dice of two boolean masks (``None`` when both are empty)."""
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float | None:
    """Symmetric HD95 in the units of ``spacing`` (``None`` when either mask is empty)."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    if not pred.any() or not ref.any():
        return None
    as_batch = [torch.from_numpy(np.ascontiguousarray(m))[None, None] for m in (pred, ref)]
    with warnings.catch_warnings():  # MONAI's own use of a deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_hausdorff_distance(
            as_batch[0],
            as_batch[1],
            include_background=True,
            percentile=95,
            spacing=[float(s) for s in spacing],
        )
    return round(float(value.item()), 4)  # MONAI computes in float32


def segmentation_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    class_names: Sequence[str],
    spacing: Sequence[float],
    ignore: int | None = None,
) -> dict[str, Any]:
    """Dice and HD95 (mm) per foreground class, and their macro means.

    Args:
        pred, ref: label volumes of the same shape (class indices, 0 = background).
        class_names: the names of classes ``0 .. K-1``.
        spacing: voxel size in mm along the array axes (``Volume.spacing``).
        ignore: a reference value whose voxels are not scored (unlabelled in training).

    Returns:
        ``{"classes": {name: {"dice", "hd95_mm", "voxels_predicted", "voxels_reference"}},
        "mean_dice", "mean_hd95_mm"}`` (``None`` where undefined, see the module docstring).

    Raises:
        DensekitError: other shapes, or a reference label that is not a class.
    """
    if pred.shape != ref.shape:
        raise DensekitError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    if len(spacing) != pred.ndim:
        raise DensekitError(f"spacing {list(spacing)} for a {pred.ndim}-d volume")
    values = np.unique(ref)
    if ignore is not None:
        values = values[values != ignore]
    bad = values[(values < 0) | (values >= len(class_names))]
    if bad.size:
        raise DensekitError(
            f"reference label {int(bad[0])} is not one of the checkpoint's classes "
            f"0..{len(class_names) - 1} ({', '.join(class_names)})"
        )
    scored = ref != ignore if ignore is not None else np.ones(ref.shape, bool)
    classes: dict[str, dict[str, Any]] = {}
    for c in range(1, len(class_names)):
        p, r = (pred == c) & scored, ref == c
        classes[class_names[c]] = {
            "dice": dice(p, r),
            "hd95_mm": hd95(p, r, spacing),
            "voxels_predicted": int(p.sum()),
            "voxels_reference": int(r.sum()),
        }
    return {
        "classes": classes,
        "mean_dice": _mean(v["dice"] for v in classes.values()),
        "mean_hd95_mm": _mean(v["hd95_mm"] for v in classes.values()),
    }


def _mean(values: Any) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None
