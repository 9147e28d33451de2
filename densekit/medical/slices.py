"""2D backbones on 3D volumes: the plane, the 2.5D stack and the intensity of every slice input.

One definition for training (the slice data module) and inference (``densekit volume``), so a
checkpoint sees the same inputs in both:

* **plane** (``"axial"``, ``"coronal"``, ``"sagittal"``): the array axis whose direction in the
  affine is closest to the patient's S (axial), A-P (coronal) or L-R (sagittal) axis, whatever
  the acquisition plane (:func:`plane_axis`).
* **display orientation** (:func:`display_order`): before slicing, every volume is brought into
  one fixed orientation per plane, so DICOM, NIfTI and NRRD files of one anatomy give the same
  slice inputs whatever their storage order. Axis 0 is the plane normal (towards +S, +P, +L in
  LPS for axial, coronal, sagittal); in-plane, as radiologists view them:

  ========  =======================  ========================
  plane     rows go towards          columns go towards
  ========  =======================  ========================
  axial     posterior (+y LPS)       patient left (+x)
  coronal   inferior (-z)            patient left (+x)
  sagittal  inferior (-z)            posterior (+y)
  ========  =======================  ========================

  Only exact axis permutations and flips are used (no resampling): each patient axis goes to
  the array axis whose affine step points most along it (the permutation maximising the summed
  alignment, so an oblique volume still gets three distinct axes), flipped where that step
  points the other way. :meth:`Display.undo` is the exact inverse, used to write predictions
  back on the input grid.
* **context** ``0`` (2D): the slice repeated as three channels, as an RGB backbone sees a grey
  image; ``k > 0`` (2.5D): the slices ``i - k, i, i + k`` as the three channels, clamped at the
  ends of the volume (:func:`slice_input`).
* **intensity** (:class:`Intensity`): a CT window (preset name or level/width in HU) or MR
  percentiles over the volume's foreground, to ``[0, 1]``; the task then applies the backbone's
  own normalisation (``scale: 1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from typing import Any, Literal

import numpy as np

from densekit.data.volume import Volume
from densekit.errors import DensekitError
from densekit.medical.intensity import ct_window, percentile_normalize, window_bounds

Plane = Literal["axial", "coronal", "sagittal"]
PLANE_DIRECTION = {"sagittal": 0, "coronal": 1, "axial": 2}  # LPS axis of each plane's normal
# (LPS axis, sign) of the display's axis 0 (normal), rows and columns, per plane
DISPLAY: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    "axial": ((2, 1), (1, 1), (0, 1)),
    "coronal": ((1, 1), (2, -1), (0, 1)),
    "sagittal": ((0, 1), (2, -1), (1, 1)),
}


@dataclass(frozen=True)
class Intensity:
    """How voxel values become ``[0, 1]``: exactly one of ``ct_window`` (a preset name such as
    ``"soft_tissue"``, or ``[level, width]`` in HU) and ``percentiles`` (``[lower, upper]`` over
    the volume's non-zero voxels, for MR)."""

    ct_window: str | tuple[float, float] | None = None
    percentiles: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if (self.ct_window is None) == (self.percentiles is None):
            raise DensekitError(
                "intensity: give exactly one of ct_window (a preset: soft_tissue, lung, bone, "
                "brain, or [level, width] in HU) and percentiles ([lower, upper], e.g. [1, 99])"
            )
        if self.ct_window is not None:
            window_bounds(self.window())  # a bad preset or width fails here, naming it
        if self.percentiles is not None:
            lower, upper = self.percentiles
            if not 0 <= lower < upper <= 100:
                raise DensekitError(
                    f"intensity.percentiles {list(self.percentiles)}: need 0 <= lower < upper "
                    "<= 100"
                )

    def window(self) -> str | tuple[float, float]:
        """The CT window as ``ct_window`` takes it."""
        if isinstance(self.ct_window, str):
            return self.ct_window
        if self.ct_window is None or len(self.ct_window) != 2:
            raise DensekitError(
                f"intensity.ct_window {self.ct_window!r}: a preset or [level, width]"
            )
        return float(self.ct_window[0]), float(self.ct_window[1])

    def apply(self, array: np.ndarray) -> np.ndarray:
        """``array`` (a whole volume, so percentiles are the volume's) scaled to ``[0, 1]``."""
        if self.percentiles is None:  # then ct_window is set (checked in __post_init__)
            return np.asarray(ct_window(array, self.window()), dtype=np.float32)
        lower, upper = self.percentiles
        return np.asarray(percentile_normalize(array, lower, upper), dtype=np.float32)


def _check_plane(plane: str) -> None:
    if plane not in PLANE_DIRECTION:
        raise DensekitError(f"plane {plane!r} is not one of {sorted(PLANE_DIRECTION)}")


def patient_axes(affine: np.ndarray) -> tuple[int, int, int]:
    """The array axis of each LPS axis ``(x, y, z)``: the permutation whose voxel steps point
    most along the patient axes (largest summed ``|cosine|``)."""
    directions = np.abs(affine[:3, :3]) / np.linalg.norm(affine[:3, :3], axis=0)
    best = max(permutations(range(3)), key=lambda p: sum(directions[i, p[i]] for i in range(3)))
    return int(best[0]), int(best[1]), int(best[2])


@dataclass(frozen=True)
class Display:
    """A volume's way into the display orientation of a plane (see the module docstring):
    ``np.transpose(array, order)``, then reverse the axes marked in ``flips``."""

    order: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    def apply(self, array: np.ndarray) -> np.ndarray:
        """``array`` on the volume's grid -> display orientation (axis 0: the plane normal)."""
        out = np.transpose(array, self.order)
        return out[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]

    def undo(self, array: np.ndarray) -> np.ndarray:
        """The exact inverse of :meth:`apply`: display orientation -> the volume's grid."""
        out = array[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]
        return np.transpose(out, np.argsort(self.order))


def display_order(volume: Volume, plane: Plane) -> Display:
    """How ``volume`` reaches ``plane``'s display orientation (see the module docstring)."""
    _check_plane(plane)
    axes = patient_axes(volume.affine)
    order = tuple(axes[p] for p, _ in DISPLAY[plane])
    flips = tuple(bool(volume.affine[p, axes[p]] * sign < 0) for p, sign in DISPLAY[plane])
    return Display(order, flips)  # type: ignore[arg-type]


def plane_axis(volume: Volume, plane: Plane) -> int:
    """The array axis (0, 1 or 2) whose voxel step points most along ``plane``'s normal."""
    _check_plane(plane)
    return patient_axes(volume.affine)[PLANE_DIRECTION[plane]]


def slice_count(volume: Volume, plane: Plane) -> int:
    return int(volume.array.shape[plane_axis(volume, plane)])


def slice_input(array: np.ndarray, axis: int, index: int, context: int = 0) -> np.ndarray:
    """``(3, H, W)`` float32: slice ``index`` along ``axis`` of an intensity-scaled volume,
    repeated (``context=0``) or with its neighbours ``index -/+ context`` (2.5D)."""
    n = array.shape[axis]
    if not 0 <= index < n:
        raise DensekitError(f"slice {index} is outside the {n} slices along axis {axis}")
    if context < 0:
        raise DensekitError(f"context must be >= 0 slices, got {context}")
    picks = (
        [index] * 3
        if context == 0
        else [max(index - context, 0), index, min(index + context, n - 1)]
    )
    return np.stack([np.take(array, i, axis=axis) for i in picks]).astype(np.float32)


def slice_target(labels: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The ``(H, W)`` label slice matching :func:`slice_input`."""
    return np.take(labels, index, axis=axis)


@dataclass(frozen=True)
class SliceSettings:
    """How a model's slice inputs are made: the ``plane``, the ``context`` and the
    ``intensity`` (what the slice data module records in checkpoints)."""

    plane: Plane
    context: int
    intensity: Intensity

    def record(self) -> dict[str, Any]:
        """The settings as the slice data module's hyper-parameters write them."""
        i = self.intensity
        intensity: dict[str, Any] = (
            {"ct_window": i.ct_window if isinstance(i.ct_window, str) else list(i.window())}
            if i.ct_window is not None
            else {"percentiles": list(i.percentiles or ())}
        )
        return {"plane": self.plane, "context": self.context, "intensity": intensity}


def parse_intensity(value: Any, where: str) -> Intensity:
    """``{ct_window: name or [level, width]}`` or ``{percentiles: [lower, upper]}``."""
    if not isinstance(value, dict) or len(value) != 1:
        raise DensekitError(
            f"{where} = {value!r}: give one key, ct_window (a preset or [level, width]) or "
            "percentiles ([lower, upper])"
        )
    [(key, setting)] = value.items()
    if key == "ct_window":
        if isinstance(setting, str):
            return Intensity(ct_window=setting)
        if isinstance(setting, list | tuple) and len(setting) == 2:
            return Intensity(ct_window=(float(setting[0]), float(setting[1])))
    elif key == "percentiles" and isinstance(setting, list | tuple) and len(setting) == 2:
        return Intensity(percentiles=(float(setting[0]), float(setting[1])))
    raise DensekitError(
        f"{where}.{key} = {setting!r}: valid are ct_window: a preset name or [level, width], "
        "and percentiles: [lower, upper]"
    )
