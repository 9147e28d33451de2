"""Windows over rasters and spatial splits: pure functions on pixel boxes.

A ``Box`` is ``(col_off, row_off, width, height)`` in pixels, as rasterio's ``Window``.

Spatial split by columns. A raster of width ``W`` and split fractions ``f = (f_0, ..., f_k)``
(summing to 1) is cut into vertical blocks ``[round(W * F_{i-1}), round(W * F_i))`` with
``F_i = f_0 + ... + f_i``: block 0 (left) for training, block 1 for validation, block 2 for
testing. No pixel belongs to two blocks, and windows never read across a block's edge (the part
of a window outside its block is filled, and its labels ignored), so training and test never
see each other's pixels.

Grid windows of side ``s`` over a block ``(c0, r0, w, h)`` start at ``c0 + i*s`` and
``r0 + j*s`` for ``i < ceil(w / s)``, ``j < ceil(h / s)``: the last row and column of windows
extend past the block and are filled there.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from densekit.errors import DensekitError

Box = tuple[int, int, int, int]


def split_columns(width: int, height: int, fractions: Sequence[float]) -> list[Box]:
    """Vertical blocks of a ``width x height`` raster, left to right, one per fraction."""
    if not fractions or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DensekitError(f"split fractions {list(fractions)} must be >= 0 and sum to 1")
    edges = [0]
    total = 0.0
    for f in fractions:
        total += f
        edges.append(round(width * total))
    edges[-1] = width
    return [(a, 0, b - a, height) for a, b in itertools.pairwise(edges)]


def check_split(split: Sequence[float] | None, val_files: bool, test_files: bool) -> None:
    """Split fractions (train, val[, test]) given instead of separate validation files; two
    fractions may go with separate test files.

    Raises:
        DensekitError: not 2 or 3 fractions, or fractions given with the files they replace.
    """
    if split is not None and len(split) not in (2, 3):
        raise DensekitError(f"split needs 2 or 3 fractions (train, val[, test]), got {split}")
    if split is not None and (val_files or (test_files and len(split) == 3)):
        raise DensekitError(
            "give either split fractions or separate val/test files, not both (two "
            "fractions, train and val, may go with separate test files)"
        )


def grid_windows(block: Box, size: int) -> list[Box]:
    """Windows of ``size x size`` covering ``block`` row by row (see the module docstring)."""
    c0, r0, w, h = block
    if w <= 0 or h <= 0:
        return []
    if size <= 0:
        raise DensekitError(f"window size must be positive, got {size}")
    return [
        (c0 + i * size, r0 + j * size, size, size)
        for j in range(math.ceil(h / size))
        for i in range(math.ceil(w / size))
    ]


def intersect(a: Box, b: Box) -> Box | None:
    """The overlap of two boxes, or None."""
    c0, r0 = max(a[0], b[0]), max(a[1], b[1])
    c1, r1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    if c1 <= c0 or r1 <= r0:
        return None
    return (c0, r0, c1 - c0, r1 - r0)
