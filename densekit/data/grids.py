"""Pixel grids, and reading any raster on a reference grid.

Every sample is read on one reference grid (CRS, transform, size): the grid of its first image
(for a folder of single-band files, the finest band). Another raster is read

* directly, when its grid is the reference grid;
* directly, when it has no georeferencing but exactly the reference size (labels saved without a
  CRS tag, as OSCD's and SpaceNet's masks): pixel (i, j) is taken to be pixel (i, j);
* through a ``WarpedVRT`` onto the reference grid otherwise (another resolution, a few pixels of
  another size, another CRS): bilinear for images, nearest for labels; pixels the raster does not
  cover are marked invalid.

Rasters that do not overlap the reference, or that lack a CRS while their size differs, are
errors that state both grids.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.dtypes import in_dtype_range
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from densekit.errors import DensekitError, InputImageError


@dataclass(frozen=True)
class Grid:
    """A pixel grid: CRS (None if the file has none), affine transform and size."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and not self.transform.is_identity

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform
        xs = (t.c, t.c + t.a * self.width)
        ys = (t.f, t.f + t.e * self.height)
        return (min(xs), min(ys), max(xs), max(ys))

    @property
    def resolution(self) -> float:
        return abs(self.transform.a)

    def describe(self) -> str:
        if not self.georeferenced:
            return f"{self.width}x{self.height} px, no CRS"
        b = ", ".join(f"{v:.6g}" for v in self.bounds)
        return f"{self.width}x{self.height} px, {self.crs}, res {self.resolution:.6g}, bounds ({b})"


def open_raster(path: str) -> Any:
    """``rasterio.open`` without the not-georeferenced warning; errors name the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as e:
        raise InputImageError(f"{path}: not a readable raster ({e})") from None


def grid_of(path: str) -> Grid:
    with open_raster(path) as src:
        return Grid(src.crs, src.transform, src.width, src.height)


def same_grid(a: Grid, b: Grid) -> bool:
    if (a.width, a.height) != (b.width, b.height):
        return False
    if not a.georeferenced or not b.georeferenced:
        return True  # no georeferencing on one side: the same size is the same pixel grid
    return a.crs == b.crs and a.transform.almost_equals(b.transform, precision=1e-9)


def check_alignable(path: str, grid: Grid, reference: Grid, reference_path: str) -> None:
    """Raise if ``path`` cannot be put on ``reference``; the message states both grids."""
    if same_grid(grid, reference):
        return
    if not grid.georeferenced or not reference.georeferenced:
        missing = path if not grid.georeferenced else reference_path
        raise DensekitError(
            f"{missing} has no CRS and the grids differ, so they cannot be aligned: {path}: "
            f"{grid.describe()}; {reference_path}: {reference.describe()}"
        )
    west, south, east, north = transform_bounds(grid.crs, reference.crs, *grid.bounds)
    rw, rs, re_, rn = reference.bounds
    if west >= re_ or east <= rw or south >= rn or north <= rs:
        raise DensekitError(
            f"{path} does not overlap {reference_path}: {path}: {grid.describe()}; "
            f"{reference_path}: {reference.describe()}"
        )


@contextlib.contextmanager
def open_on_grid(
    path: str, reference: Grid, categorical: bool, nodata: float | None = None
) -> Iterator[tuple[Any, bool]]:
    """Yield ``(reader, warped)``: a dataset whose pixel grid is ``reference``.

    ``warped`` readers mark the pixels without data (nodata, or outside the raster) in
    ``read_masks``. ``nodata`` overrides the file's nodata value as the warp's source nodata,
    so resampling leaves those pixels out instead of blending the fill value into valid ones.
    """
    with open_raster(path) as src:
        grid = Grid(src.crs, src.transform, src.width, src.height)
        if same_grid(grid, reference):
            yield src, False
            return
        resampling = Resampling.nearest if categorical else Resampling.bilinear
        source_nodata = src.nodata
        if nodata is not None:  # replaces the file's value; one the type cannot hold marks none
            source_nodata = nodata if in_dtype_range(nodata, src.dtypes[0]) else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with WarpedVRT(
                src,
                crs=reference.crs,
                transform=reference.transform,
                width=reference.width,
                height=reference.height,
                resampling=resampling,
                src_nodata=source_nodata,
                add_alpha=source_nodata is None,
            ) as vrt:
                yield vrt, True
