"""Inference with trained models: one checkpoint reader, one runner, two plans.

* :func:`load_trained` reads a checkpoint once: the model, what it outputs and takes, the data
  module's settings and its provenance (:class:`Trained`).
* :func:`~densekit.inference.runner.run` is the one inference loop: batches from a reader
  through the model into a merger and its sink.
* Two plans over it: tiled inference on GeoTIFFs of any size (:func:`tile`, ``densekit tile``:
  :mod:`densekit.inference.tiles`) and slice-by-slice inference on medical volumes
  (:func:`segment_volume`, ``densekit volume``: :mod:`densekit.inference.volume`).
"""

from densekit.inference.blend import hann_window
from densekit.inference.plan import Plan, TileOptions, make_plan, tile_positions
from densekit.inference.rasters import RasterInput, open_input
from densekit.inference.tiles import StoppedEarly, tile, tile_raster
from densekit.inference.trained import Trained, load_trained
from densekit.inference.volume import load_volume_model, predict_volume, segment_volume

__all__ = [
    "Plan",
    "RasterInput",
    "StoppedEarly",
    "TileOptions",
    "Trained",
    "hann_window",
    "load_trained",
    "load_volume_model",
    "make_plan",
    "open_input",
    "predict_volume",
    "segment_volume",
    "tile",
    "tile_positions",
    "tile_raster",
]
