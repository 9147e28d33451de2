"""Mask values and segments -> classes: one definition for training (the medical data modules)
and scoring (``densekit volume --reference``), so a reference is read as the checkpoint's
training masks were.

* :func:`map_values`: label-map values -> classes by ``label_map``; values not listed become
  ``unlisted`` (background 0, or the ignore value), or are an error.
* :func:`segment_labels`: per-segment masks (SEG segments, RTSTRUCT ROIs) -> one class map by
  ``segments`` (name -> class); segments of different classes may overlap only when both are in
  ``priority`` (the first listed wins); segments not listed become ``unlisted``.
"""

from __future__ import annotations

import numpy as np

from densekit.errors import DensekitError


def map_values(raw: np.ndarray, label_map: dict[int, int], unlisted: int | None, where: str):
    """Raw label values -> classes; values not in ``label_map`` (0 excepted, which stays 0
    unless listed) become ``unlisted``, or are an error naming them when it is None."""
    values = np.unique(raw)
    table = {0: 0, **label_map} if unlisted is not None else dict(label_map)
    unknown = [int(v) for v in values if int(v) not in table]
    if unknown and unlisted is None:
        raise DensekitError(
            f"{where}: label value(s) {unknown[:10]} are not in label_map {label_map}"
        )
    out = np.full(raw.shape, -1 if unlisted is None else unlisted, np.int32)
    for v in values:
        if int(v) in table:
            out[raw == v] = table[int(v)]
    return out


def segment_labels(
    masks: np.ndarray,
    names: list[str],
    segments: dict[str, int],
    priority: list[str],
    unlisted: int,
    where: str,
) -> np.ndarray:
    """One class map from per-segment masks ``(K, ...)`` (see the module docstring);
    segments not in ``segments`` become ``unlisted``."""
    binary = masks >= 0.5 if np.issubdtype(masks.dtype, np.floating) else masks > 0
    rank = {n: i for i, n in enumerate(priority)}
    listed = [k for k, n in enumerate(names) if n in segments]
    listed.sort(key=lambda k: rank.get(names[k], len(rank)))
    labels = np.zeros(masks.shape[1:], np.int32)
    owner = np.full(masks.shape[1:], -1, np.int32)
    for k in listed:
        cls = segments[names[k]]
        clash = binary[k] & (owner >= 0) & (labels != cls)
        for o in np.unique(owner[clash]).tolist():
            if names[k] not in rank or names[o] not in rank:
                raise DensekitError(
                    f"{where}: segments '{names[o]}' (class {segments[names[o]]}) and "
                    f"'{names[k]}' (class {cls}) overlap in {int((clash & (owner == o)).sum())} "
                    "voxels: give priority (the first listed wins where they overlap), e.g. "
                    f"[{names[o]}, {names[k]}], or map them to one class"
                )
        free = binary[k] & (owner < 0)
        labels[free], owner[free] = cls, k
    if unlisted != 0:
        other = [k for k in range(len(names)) if names[k] not in segments]
        if other:
            labels[binary[other].any(axis=0) & (owner < 0)] = unlisted
    return labels
