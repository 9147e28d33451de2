"""Window grids and column splits: pure box arithmetic."""

import pytest

from densekit.data.windows import grid_windows, intersect, split_columns
from densekit.errors import DensekitError


def test_split_columns_partition_the_raster():
    blocks = split_columns(900, 500, [0.6, 0.2, 0.2])
    assert blocks == [(0, 0, 540, 500), (540, 0, 180, 500), (720, 0, 180, 500)]
    assert sum(b[2] for b in blocks) == 900
    with pytest.raises(DensekitError, match=r"must be >= 0 and sum to 1"):
        split_columns(10, 10, [0.5, 0.4])


def test_grid_windows_cover_the_block_once():
    wins = grid_windows((540, 0, 180, 500), 112)
    assert len(wins) == 2 * 5 and wins[0] == (540, 0, 112, 112) and wins[1] == (652, 0, 112, 112)
    covered = {
        (c, r)
        for c0, r0, w, h in wins
        for c in range(c0, c0 + w)
        for r in range(r0, r0 + h)
        if 540 <= c < 720 and r < 500
    }
    assert len(covered) == 180 * 500
    assert grid_windows((0, 0, 0, 10), 8) == []


def test_intersect():
    assert intersect((0, 0, 10, 10), (5, 5, 10, 10)) == (5, 5, 5, 5)
    assert intersect((0, 0, 10, 10), (10, 0, 5, 5)) is None
