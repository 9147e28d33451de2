"""A medical image volume on its patient-space grid: what the series, NIfTI and NRRD readers
return, what masks are aligned to, and what volume inference writes.

Conventions (one for the whole package):

* ``array`` is ``(slices, rows, columns)``: slices sorted by their position along the slice
  normal (increasing), rows and columns as in the DICOM pixel data.
* ``affine`` maps a voxel index ``(slice, row, column, 1)`` to patient coordinates in
  millimetres in DICOM's **LPS** space. NIfTI (RAS, index order ``(i, j, k)``) is converted on
  reading and writing (:meth:`Volume.nifti_affine`), never stored.
* Geometry is compared with :meth:`Volume.same_grid` (shape and affine within a tolerance), never
  by file order.
* PHI: ``patient_key`` is a one-way hash of PatientID for splits by patient; no patient tag is
  kept, so nothing in a Volume can leak into logs, checkpoints or file names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

# LPS <-> RAS: flip the first two patient axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True, eq=False)
class Volume:
    """Voxels and geometry of one series (see the module docstring for the conventions).

    Attributes:
        array: ``(slices, rows, columns)`` voxel values (float32 for images, integer labels).
        affine: ``(4, 4)`` voxel index ``(slice, row, column)`` -> LPS millimetres.
        modality: ``"CT"``, ``"MR"``, ... (``""`` when unknown, e.g. NIfTI).
        series_uid, study_uid, frame_of_reference_uid: DICOM identifiers ("" when absent).
        patient_key: pseudonymous key of the patient (``pseudonym(PatientID)``), for splits.
        sop_instance_uids: for DICOM series, the SOPInstanceUID of each slice, in array order.
        source: where it came from (folder or file path), for error messages.
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str = ""
    series_uid: str = ""
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    patient_key: str = ""
    sop_instance_uids: tuple[str, ...] = ()
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        s, r, c = self.array.shape
        return int(s), int(r), int(c)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (slice, row, column)."""
        return tuple(float(np.linalg.norm(self.affine[:3, i])) for i in range(3))  # type: ignore[return-value]

    def nifti_affine(self) -> np.ndarray:
        """The RAS affine of the array transposed to NIfTI's ``(column, row, slice)`` order."""
        swap = np.zeros((4, 4))
        swap[0, 2] = swap[1, 1] = swap[2, 0] = swap[3, 3] = 1.0  # (i, j, k) = (col, row, slice)
        return LPS_TO_RAS @ self.affine @ swap

    def same_grid(self, other: Volume, tol_mm: float = 1e-3) -> bool:
        """Same shape and the same voxel -> patient mapping (within ``tol_mm`` at every corner)."""
        if self.shape != other.shape:
            return False
        corners = np.array(
            [
                [s, r, c, 1.0]
                for s in (0, self.shape[0])
                for r in (0, self.shape[1])
                for c in (0, self.shape[2])
            ]
        ).T
        diff = (self.affine @ corners) - (other.affine @ corners)
        return bool(np.abs(diff[:3]).max() <= tol_mm)

    def describe(self) -> str:
        """Shape, spacing and origin for error messages (no patient data)."""
        origin = ", ".join(f"{v:.2f}" for v in self.affine[:3, 3])
        spacing = " x ".join(f"{v:.3g}" for v in self.spacing)
        return f"{self.shape} voxels of {spacing} mm, origin ({origin}) LPS"


def pseudonym(patient_id: str) -> str:
    """A one-way key of a PatientID (12 hex digits of its sha256), for splits by patient."""
    return hashlib.sha256(patient_id.encode()).hexdigest()[:12] if patient_id else ""
