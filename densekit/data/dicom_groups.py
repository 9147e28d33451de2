"""Functional groups of enhanced multi-frame DICOM objects: the item that holds a frame's
attributes (its PerFrameFunctionalGroupsSequence item first, then the shared one)."""

from __future__ import annotations

from pydicom.dataset import Dataset

SHARED = "SharedFunctionalGroupsSequence"
PER_FRAME = "PerFrameFunctionalGroupsSequence"


def frame_item(ds: Dataset, index: int, name: str) -> Dataset | None:
    """Item of functional group ``name`` for frame ``index`` (per-frame first, then shared),
    or None where neither holds it."""
    for seq, i in ((PER_FRAME, index), (SHARED, 0)):
        groups = ds.get(seq)
        if groups and len(groups) > i and name in groups[i] and len(groups[i][name].value):
            return groups[i][name].value[0]
    return None
