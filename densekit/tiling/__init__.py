"""Tiled inference on rasters of any size: ``densekit tile`` and :func:`tile`.

How a raster is processed:

* Tiles of ``tile`` pixels (a multiple of the patch) on a regular grid with step
  ``tile - overlap``, starting at the top-left corner. Tiles that reach past the right or bottom
  edge are padded (the pixels outside count as nodata, i.e. the normalisation mean), never
  shifted, so every tile sits at a multiple of the step.
* Each tile's output (class or change probabilities, or depth) is multiplied by a smooth window
  ``w(i) w(j)`` with ``w(i) = sin^2(pi (i + 0.5) / tile)`` (a Hann window shifted half a pixel so
  it is never zero) and summed; the result is the sum divided by the summed weights. Where tiles
  overlap, each one's borders weigh least, so no seam shows; a model that is exactly
  translation-equivariant gives the untiled result.
* The raster is processed one strip (a row of tiles) at a time, each strip left to right. Once
  a tile at column ``c`` is added, the strip's columns left of ``c`` have every tile of the
  strip: their first ``tile - overlap`` rows are final and written out in column blocks, their
  last ``overlap`` rows are kept to start the next strip's sums. The sums held are
  ``(channels + 1) x tile x (2048 + tile)`` floats plus that ``overlap x width`` band, whatever
  the raster's size, plus the read-ahead: windows are read by a background thread while the
  model runs (``prefetch`` batches ahead).
* Pixels that are nodata in the input (any band, either date) are nodata in the output.
* Outputs: segmentation and change maps as uint8 with a colour table, nodata 255 and the class
  names in the metadata (``CLASS_NAMES``, ``CLASS_<i>``); depth/height as float32 (nodata NaN);
  optionally the probabilities (float32, one band per class, or the change probability). Each
  has the input's CRS, transform and size, and is written as a tiled, deflate-compressed
  Cloud-Optimised GeoTIFF with overviews (GDAL's COG driver), built from a partial file once
  every strip is done and then moved into place; nothing half-written is left at the output.
* ``resume``: the partial file and a progress record (``<output>.partial/``) survive a killed
  run; a resumed run recomputes the strip before the first unfinished one (for the overlap) and
  continues; the output has the same bytes as an uninterrupted run.
* Several processes (``torchrun``; ``RANK``/``WORLD_SIZE`` from the environment) split the
  strips into contiguous ranges; each writes its own part, rank 0 assembles the output once all
  are done. The output is the same as from one process.
* A JSON sidecar ``<output>.json`` records the parameters, the checkpoint's and the backbone
  weights' sha256 and the timings.
"""

from densekit.tiling.blend import hann_window
from densekit.tiling.model import RasterInput, TileModel, load_tile_model, open_input
from densekit.tiling.output import CLASS_NODATA
from densekit.tiling.run import (
    Plan,
    StoppedEarly,
    TileOptions,
    make_plan,
    tile,
    tile_positions,
    tile_raster,
)

__all__ = [
    "CLASS_NODATA",
    "Plan",
    "RasterInput",
    "StoppedEarly",
    "TileModel",
    "TileOptions",
    "hann_window",
    "load_tile_model",
    "make_plan",
    "open_input",
    "tile",
    "tile_positions",
    "tile_raster",
]
