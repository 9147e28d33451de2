"""The ``--reference`` of ``densekit volume``: a mask on the input grid read as the checkpoint's
training masks were, so its values are the checkpoint's classes (see :func:`read_reference`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from densekit.data.masks import read_label_map, read_seg
from densekit.data.nifti import DICOM_SUFFIXES, NIFTI_SUFFIXES, NRRD_SUFFIXES
from densekit.data.volume import Volume
from densekit.errors import DensekitError
from densekit.medical.classes import map_values, segment_labels

IGNORED = -1  # reference voxels that training ignored (unlisted: ignore): not scored


def read_reference(
    path: str | Path,
    image: Volume,
    class_names: list[str],
    mask_classes: dict[str, Any] | None = None,
) -> tuple[np.ndarray, dict]:
    """A reference mask as class labels on ``image``'s grid, and how its segments map.

    The reference becomes classes as the checkpoint's training masks did, by the same functions
    (:mod:`densekit.medical.classes`) and the settings the slice data module saved
    (``mask_classes``: ``segments``, ``label_map``, ``priority``, ``unlisted``):

    * a label map: values through ``label_map``; without one the values are the classes.
    * a SEG: segments through ``segments``. A checkpoint without ``segments`` (not trained on
      SEG/RTSTRUCT masks by the data module): each segment label must name a class, compared
      without regard to case (``Liver`` is class ``liver``); otherwise it is an error naming
      the segments and the classes. Segments are never matched by their order.

    Voxels that training ignored (``unlisted: ignore``) are :data:`IGNORED` and not scored.
    """
    path = Path(path)
    if not path.is_file():
        raise DensekitError(f"--reference {path}: no such file")
    classes = mask_classes or {}
    unlisted = IGNORED if classes.get("unlisted") == "ignore" else 0
    where = f"--reference {path}"
    suffix = file_suffix(path)
    if suffix in (*NIFTI_SUFFIXES, *NRRD_SUFFIXES):
        raw = np.asarray(read_label_map(path, image).array)
        table = classes.get("label_map")
        if table is None:
            return raw, {"format": "label map", "matched_by": "values are classes"}
        table = {int(k): int(v) for k, v in table.items()}
        labels = map_values(raw, table, unlisted, where)
        return labels, {"format": "label map", "matched_by": "label_map of the checkpoint"}
    if suffix not in DICOM_SUFFIXES:
        valid = ", ".join((*NIFTI_SUFFIXES, *NRRD_SUFFIXES, *DICOM_SUFFIXES))
        raise DensekitError(f"{where}: unknown mask format {suffix!r}; use {valid}")
    masks, names = read_seg(path, image)
    segments = classes.get("segments")
    matched_by = "segments of the checkpoint"
    if segments is None:
        lower = {c.lower(): k for k, c in enumerate(class_names) if k > 0}
        unknown = [n for n in names if n.lower() not in lower]
        if unknown or len(lower) < len(class_names) - 1:
            raise DensekitError(
                f"{where}: segment(s) {', '.join(unknown) or '(case clash)'} of its segments "
                f"({', '.join(names)}) name no class of the checkpoint "
                f"({', '.join(class_names[1:])}), and the checkpoint records no segments "
                "mapping; name the segments as the classes"
            )
        segments, matched_by = {n: lower[n.lower()] for n in names}, "name"
    labels = segment_labels(
        masks, names, segments, list(classes.get("priority") or []), unlisted, where
    )
    bad = sorted({int(c) for c in segments.values()} - set(range(len(class_names))))
    if bad:
        raise DensekitError(
            f"{where}: the checkpoint's segments {segments} give class(es) {bad}, not one of "
            f"its classes 0..{len(class_names) - 1} ({', '.join(class_names)})"
        )
    mapped = {n: class_names[segments[n]] for n in names if n in segments}
    return labels, {"format": "seg", "segments": mapped, "matched_by": matched_by}


def file_suffix(path: Path) -> str:
    """The suffix that names the format (``.nii.gz`` counts as one)."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()
