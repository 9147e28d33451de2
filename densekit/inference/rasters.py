"""The reader of tiled inference: the input raster(s) checked against the model, and their
tiles read strip by strip on the first date's grid, nodata as NaN."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from densekit.data.band_layout import BandLayout
from densekit.data.bands import BandRef, resolve_band_indices
from densekit.data.datasets import RasterReaders, read_box, reference_grid
from densekit.data.grids import Grid, check_alignable
from densekit.errors import DensekitError, InputImageError
from densekit.inference.plan import Plan
from densekit.inference.runner import Batch
from densekit.inference.trained import Trained

Given = TypeVar("Given", int, BandRef)  # 0-based indices, or what --bands names


@dataclass
class RasterInput:
    """The input raster(s) of one run, read on the first date's grid."""

    path: str
    path2: str | None
    grid: Grid
    band_idx: list[int] | None
    band_idx2: list[int] | None = None

    def read(self, readers: RasterReaders, col: int, row: int, size: int) -> list[np.ndarray]:
        """The tile at ``(col, row)`` of each date as ``(C, size, size)`` with NaN for nodata
        (and for pixels with a NaN or infinite value in any band)."""
        region = (0, 0, self.grid.width, self.grid.height)
        window = (col, row, size, size)
        out = []
        for path, idx in ((self.path, self.band_idx), (self.path2, self.band_idx2)):
            if path is None:
                continue
            bands = None if idx is None else [i + 1 for i in idx]
            x, inside, invalid = read_box(path, window, region, bands, self.grid, readers=readers)
            # nodata, outside the raster, or NaN/inf in any band (a raster without a nodata
            # value): NaN in every band, which the model reads as nodata
            x[:, ~inside | invalid | ~np.isfinite(x).all(axis=0)] = np.nan
            out.append(x)
        return out


def open_input(
    model: Trained, path: str, path2: str | None, bands: Sequence[BandRef] | None = None
) -> RasterInput:
    """Check the input against the model (bands, dates, overlap) and describe it.

    Without ``bands``, each input must have the band layout (count, data type, names) of the
    rasters the model was trained on, and the model reads the bands it was trained on. With
    ``bands`` (1-based indices or names of the input's bands, one per model input band, in the
    model's order) the input may be of another kind: the user says which of its bands play which
    role, and only their number is checked.
    """
    if not Path(path).exists():
        raise InputImageError(f"input {path}: no such file")
    spec = model.inputs
    if (spec.images == 2) != (path2 is not None):
        need = "two dates (input and input2)" if spec.images == 2 else "one input"
        raise DensekitError(f"the checkpoint is a {model.output.task} model and takes {need}")
    grid, _ = reference_grid(path)
    idx = input_bands(model, path, bands)
    idx2 = None
    if path2 is not None:
        if not Path(path2).exists():
            raise InputImageError(f"input2 {path2}: no such file")
        grid2, _ = reference_grid(path2)
        check_alignable(path2, grid2, grid, path)
        idx2 = input_bands(model, path2, bands)
    raster = RasterInput(path, path2, grid, idx, idx2)
    check_statistics(model, raster)
    return raster


def model_band_order(
    given: list[Given], trained: Sequence[BandRef] | None, channels: int
) -> list[Given] | None:
    """The input bands for each model input band, from the bands a user gave (``--bands``):
    one per model input band, or one per distinct band of the model's training ``bands`` (in
    the order they first appear there), repeated as it repeats them (a model trained on
    ``bands: [1, 1, 1]``, a grey band on three channels, takes ``--bands 2`` as ``2, 2, 2``).
    None when the count fits neither."""
    if len(given) == channels:
        return given
    if trained is not None:
        distinct = list(dict.fromkeys(trained))
        if len(given) == len(distinct):
            chosen = dict(zip(distinct, given, strict=True))
            return [chosen[b] for b in trained]
    return None


def input_bands(model: Trained, path: str, bands: Sequence[BandRef] | None) -> list[int] | None:
    """The 0-based bands of ``path`` the model reads (None: all), after checking the raster
    against the model (see :func:`open_input`)."""
    spec = model.inputs
    layout = BandLayout.of(path)
    source = f"the checkpoint {model.checkpoint}" if model.checkpoint else "the model (in memory)"
    trained = "" if spec.bands is None else f" (bands {list(spec.bands)} of its rasters)"
    distinct = spec.channels if spec.bands is None else len(dict.fromkeys(spec.bands))
    want = f"{spec.channels}" if distinct == spec.channels else f"{distinct} or {spec.channels}"
    if bands is not None:
        given = resolve_band_indices(list(bands), layout.names, path)
        idx = model_band_order(given, spec.bands, spec.channels)
        if idx is None:
            raise DensekitError(
                f"--bands {','.join(str(b) for b in bands)}: {len(given)} band(s), but the "
                f"model of {source} takes {spec.channels}{trained}; give {want} 1-based "
                f"indices or names of the bands of {path} ({layout.describe()}), in the "
                "model's order"
            )
        return idx
    hint = (
        f"give --bands: {want} 1-based indices or names of this raster's bands, in "
        f"the model's order{trained}"
    )
    if model.rasters is None:
        warnings.warn(
            f"input {path} ({layout.describe()}): {source} does not record the rasters it was "
            "trained on (a checkpoint written before densekit recorded them), so "
            "only the band count can be checked, not the data type (value range) or the band "
            "names",
            UserWarning,
            stacklevel=4,
        )
    else:
        differ = model.rasters.differences(layout)
        if differ:
            raise DensekitError(
                f"input {path} has {layout.describe()}; {source} was "
                f"trained on rasters with {model.rasters.describe()} (different "
                f"{', '.join(differ)}); {hint}"
            )
    idx = None if spec.bands is None else resolve_band_indices(spec.bands, layout.names, path)
    count = layout.count if idx is None else len(idx)
    if count != spec.channels:
        raise DensekitError(
            f"input {path}: {count} bands; {source} was trained on {spec.channels}{trained}; {hint}"
        )
    return idx


def check_statistics(model: Trained, raster: RasterInput, grid: int = 5, side: int = 64) -> None:
    """Warn when the input's band means sit far outside what the model was trained on (another
    unit or scaling, e.g. reflectance x 10000 against 8-bit data). Reads ``grid x grid`` small
    windows spread over the raster: the cost does not depend on its size."""
    w, h = raster.grid.width, raster.grid.height
    samples = []
    with RasterReaders() as readers:
        for fy in np.linspace(0, 1, grid):
            for fx in np.linspace(0, 1, grid):
                col, row = int(fx * max(w - side, 0)), int(fy * max(h - side, 0))
                samples.append(raster.read(readers, col, row, side)[0])
    x = np.stack(samples).transpose(1, 0, 2, 3).reshape(len(samples[0]), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-nodata band: no mean
        means = np.nanmean(x.astype(np.float64), axis=1)
    spec = model.inputs
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    z = (means * spec.scale - mean) / std
    far = [(i, float(v)) for i, v in enumerate(z) if np.isfinite(v) and abs(v) > 4]
    if far:
        bands = ", ".join(f"band {i + 1} at {v:+.1f} std" for i, v in far)
        warnings.warn(
            f"input {raster.path}: band means far from the checkpoint's training statistics "
            f"({bands}); check the bands and units the model was trained on",
            UserWarning,
            stacklevel=3,
        )


def strip_batches(
    raster: RasterInput, plan: Plan, strips: range, batch_size: int, seed: int | None
) -> Iterator[Batch]:
    """The tiles of ``strips``, left to right, ``batch_size`` at a time (a batch never spans
    two strips): ``where`` is ``(strip, tile columns)``, ``valid`` the pixels valid in every
    band and date; the tiles of the ``seed`` strip count as no work done."""
    with RasterReaders() as readers:
        for s in strips:
            row = plan.rows[s]
            for i in range(0, len(plan.cols), batch_size):
                cols = plan.cols[i : i + batch_size]
                dates = [_read_tile(raster, readers, c, row, plan.tile) for c in cols]
                valid = np.stack([np.isfinite(np.stack(d)).all(axis=(0, 1)) for d in dates])
                inputs = [
                    torch.from_numpy(np.stack([d[k] for d in dates])) for k in range(len(dates[0]))
                ]
                yield Batch((s, cols), inputs, valid, 0 if s == seed else len(cols))


def _read_tile(
    raster: RasterInput, readers: RasterReaders, col: int, row: int, size: int
) -> list[np.ndarray]:
    """:meth:`RasterInput.read`, a failed read (a damaged block) named as the input's."""
    try:
        return raster.read(readers, col, row, size)
    except OSError as e:
        names = raster.path if raster.path2 is None else f"{raster.path} / {raster.path2}"
        first = str(e).strip().splitlines()
        raise InputImageError(
            f"input {names}: reading the tile at column {col}, row {row} failed "
            f"({first[0] if first else type(e).__name__}); a damaged or truncated file?"
        ) from None
