"""The plan of a tiled run: its options, the tile grid and the strips, as pure functions.

Tiles of ``tile`` pixels (a multiple of the model's patch) lie on a regular grid with step
``tile - overlap``, starting at the top-left corner: along an axis of ``n`` pixels the starts are
``0, step, 2 step, ..., k step`` with ``k = ceil((n - tile) / step)`` (one tile when
``n <= tile``). Tiles that reach past the right or bottom edge are padded (the pixels outside
count as nodata), never shifted, so every tile sits at a multiple of the step. A strip is one row
of tiles; strip ``s`` starts at row ``rows[s]`` and its first ``step`` rows (all rows for the
last strip) are final once its tiles are blended. Several processes take contiguous ranges of
strips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from densekit.data.grids import Grid
from densekit.errors import DensekitError

BLOCK = 256  # block side of the strip files; strips are finished in whole blocks of columns
PRECISIONS = ("32", "bf16")


@dataclass(frozen=True)
class TileOptions:
    """Settings of a tiled run.

    Args:
        tile: tile side in pixels; rounded down to a multiple of the model's patch.
        overlap: pixels shared by neighbouring tiles (less than half the tile).
        batch_size: tiles per forward pass (batches never span two strips).
        probabilities: also write the probabilities to ``<output stem>_probs.tif``.
        device: torch device, e.g. ``cpu`` or ``cuda`` (under torchrun ``cuda`` means the GPU
            of the process's ``LOCAL_RANK``); None: a checkpoint is loaded on the CPU, a model
            given in memory stays where it is.
        precision: ``32`` or ``bf16`` (autocast; on GPUs).
        prefetch: batches read ahead by the background thread.
        resume: continue from the progress of a killed run with the same settings.
        stop_after_strips: stop (keeping the partial file) after this many strips of this
            process; a later ``resume`` continues. For time-limited jobs and tests.
        progress: show a progress bar (tiles/s and ETA) on rank 0.
        gdal_cache_mb: GDAL's block cache during the run (bounds the memory of reads and writes).
        bands: the input's bands the model reads, 1-based indices or names, one per model input
            band in the model's order; None: the bands it was trained on, from inputs with the
            band count, data type and band names of the training rasters (others are refused).
    """

    tile: int = 512
    overlap: int = 64
    batch_size: int = 4
    probabilities: bool = False
    device: str | None = None
    precision: str = "32"
    prefetch: int = 2
    resume: bool = False
    stop_after_strips: int | None = None
    progress: bool = True
    gdal_cache_mb: int = 32
    bands: tuple[int | str, ...] | None = None

    def __post_init__(self) -> None:
        """Values that cannot work are refused before anything is read or written."""
        if self.precision not in PRECISIONS:
            raise DensekitError(
                f"precision {self.precision!r}: valid values are {', '.join(PRECISIONS)}"
            )
        for name in ("tile", "batch_size", "prefetch", "gdal_cache_mb"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise DensekitError(f"{name} {value!r}: give a whole number >= 1")
        if not isinstance(self.overlap, int) or self.overlap < 0:
            raise DensekitError(f"overlap {self.overlap!r}: give a whole number >= 0")
        if self.bands is not None and (
            not self.bands or not all(isinstance(b, int | str) for b in self.bands)
        ):
            raise DensekitError(
                f"bands {self.bands!r}: give 1-based band indices or band names, e.g. (4, 3, 2)"
            )
        stop = self.stop_after_strips
        if stop is not None and (not isinstance(stop, int) or stop < 1):
            raise DensekitError(f"stop_after_strips {stop!r}: give a whole number >= 1")


def tile_positions(length: int, tile: int, step: int) -> list[int]:
    """Tile starts ``0, step, 2 step, ...`` until a tile reaches ``length``."""
    if length <= tile:
        return [0]
    return [k * step for k in range(math.ceil((length - tile) / step) + 1)]


@dataclass(frozen=True)
class Plan:
    """Tile grid and strip ranges of one run."""

    tile: int
    step: int
    cols: list[int]
    rows: list[int]
    width: int
    height: int

    @property
    def tiles(self) -> int:
        return len(self.cols) * len(self.rows)

    def strip_rows(self, s: int) -> tuple[int, int]:
        """Output rows ``[a, b)`` that are final after strip ``s``."""
        a = self.rows[s]
        b = self.height if s == len(self.rows) - 1 else self.rows[s + 1]
        return a, min(b, self.height)

    def split(self, rank: int, world: int) -> tuple[int, int]:
        """Contiguous strips ``[first, last)`` of ``rank`` among ``world`` processes."""
        n = len(self.rows)
        return rank * n // world, (rank + 1) * n // world


def make_plan(grid: Grid, opts: TileOptions, patch: int, path: str) -> Plan:
    """The plan of tiling ``grid`` (the raster at ``path``) with a model of patch ``patch``.

    A raster that fits in one tile on both sides is one tile of the smallest multiple of the
    patch that covers it (a 1 x 1 raster: one patch, padded); a raster narrower than the tile
    on one side only is padded on that side.
    """
    tile = opts.tile - opts.tile % patch
    if tile < patch:
        raise DensekitError(f"tile {opts.tile}: smaller than the model's patch {patch}")
    if not 0 <= opts.overlap < tile / 2:
        raise DensekitError(f"overlap {opts.overlap}: must be >= 0 and less than half of {tile}")
    if grid.width < 1 or grid.height < 1:
        raise DensekitError(f"input {path}: {grid.width}x{grid.height} pixels, nothing to tile")
    step = tile - opts.overlap
    if grid.width <= tile and grid.height <= tile:  # one tile: no overlap to blend
        tile = math.ceil(max(grid.width, grid.height) / patch) * patch
        step = tile
    return Plan(
        tile,
        step,
        tile_positions(grid.width, tile, step),
        tile_positions(grid.height, tile, step),
        grid.width,
        grid.height,
    )
