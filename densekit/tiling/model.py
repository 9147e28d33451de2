"""The model side of tiled inference: a trained task, and the input checked against it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from densekit.data.bands import resolve_band_indices
from densekit.data.datasets import RasterReaders, band_table, read_box, reference_grid
from densekit.data.grids import Grid, check_alignable
from densekit.errors import DensekitError, InputImageError


class TileModel:
    """A trained task and what tiling needs to know about it."""

    def __init__(self, task: Any, checkpoint: str | None, device: str, precision: str) -> None:
        self.task = task.eval().to(device)
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        if precision not in ("32", "bf16"):
            raise DensekitError(f"precision {precision!r}: valid values are '32' and 'bf16'")
        self.autocast = precision == "bf16"
        hp = task.hparams
        self.kind: str = task.kind
        self.in_channels = int(hp.in_channels)
        self.bands = list(hp.bands) if hp.bands is not None else None
        self.patch = task.backbone.patch_size if task.backbone is not None else 32
        self.upscale = float(hp.get("input_upscale", 1.0))
        if self.kind == "depth":
            self.channels = 1
            self.class_names: list[str] = []
        else:
            binary = self.kind == "change" and task.binary
            self.channels = 1 if binary else int(hp.num_classes)
            names = hp.get("class_names") or []
            self.class_names = list(names) or (
                ["no_change", "change"] if binary else [f"class{i}" for i in range(hp.num_classes)]
            )

    def backbone_tile(self, tile: int) -> int:
        """The side in pixels of what the backbone sees of a ``tile``-pixel tile (padded to
        its patch): ``tile`` unless the model scales its input (``input_upscale``)."""
        side = max(round(tile * self.upscale), 1)
        return side + -side % self.patch

    def scaling_note(self, tile: int) -> str:
        """What input scaling does to the backbone's share of a tile."""
        side = self.backbone_tile(tile)
        return (
            f"input_upscale {self.upscale:g}: the backbone sees {side} x {side} px per {tile} px "
            f"tile ({(side / tile) ** 2:.1f}x the pixels; lower --batch-size by that factor for "
            "the memory of an unscaled run)"
        )

    @torch.no_grad()
    def __call__(self, *images: torch.Tensor) -> torch.Tensor:
        """Raw tiles ``(B, C, T, T)`` -> blendable outputs ``(B, K, T, T)``."""
        xs = [x.to(self.device, non_blocking=True) for x in images]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.task(*xs).float()
        if self.kind == "depth":
            return out
        if self.channels == 1:
            return torch.sigmoid(out)
        return torch.softmax(out, dim=1)

    def finish(self, blended: np.ndarray) -> np.ndarray:
        """Blended outputs ``(K, h, w)`` -> the map ``(h, w)``."""
        if self.kind == "depth":
            return blended[0].astype(np.float32)
        if self.channels == 1:
            return (blended[0] > 0.5).astype(np.uint8)
        return _argmax0(blended).astype(np.uint8)


def _argmax0(x: np.ndarray) -> np.ndarray:
    """``x.argmax(0)`` for ``(K, h, w)``, a channel at a time.

    NumPy's argmax over the first axis copies the array to put that axis last and then runs
    one tiny argmax per pixel, tens of times slower than these ``K - 1`` element-wise passes.
    Ties go to the first channel, as with argmax; with a NaN anywhere NumPy's own is used (it
    picks the first NaN).
    """
    if np.isnan(x).any():
        return x.argmax(0)
    best = x[0]
    index = np.zeros(x.shape[1:], np.intp)
    for k in range(1, len(x)):
        larger = x[k] > best
        np.copyto(index, k, where=larger)
        best = np.maximum(best, x[k])
    return index


def load_tile_model(
    checkpoint: str | Path, device: str = "cpu", precision: str = "32"
) -> TileModel:
    """Load a densekit checkpoint of any task (the backbone file is checked by sha256)."""
    from densekit.tasks import TASKS

    path = Path(checkpoint)
    if not path.is_file():
        raise DensekitError(f"--checkpoint {path}: no such file")
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True).get("densekit")
    except Exception as e:
        raise DensekitError(
            f"--checkpoint {path}: not a readable PyTorch checkpoint ({type(e).__name__}); "
            "give a .ckpt written by densekit fit"
        ) from None
    if meta is None or meta.get("task") not in TASKS:
        raise DensekitError(f"--checkpoint {path}: not a checkpoint of densekit fit")
    task = TASKS[meta["task"]].load_from_checkpoint(str(path), map_location="cpu")
    return TileModel(task, str(path), device, precision)


# -- reading ---------------------------------------------------------------------------------
@dataclass
class RasterInput:
    """The input raster(s) of one run, read on the first date's grid."""

    path: str
    path2: str | None
    grid: Grid
    band_idx: list[int] | None
    band_idx2: list[int] | None = None

    def read(self, readers: RasterReaders, col: int, row: int, size: int) -> list[np.ndarray]:
        """The tile at ``(col, row)`` of each date as ``(C, size, size)`` with NaN for nodata."""
        region = (0, 0, self.grid.width, self.grid.height)
        window = (col, row, size, size)
        out = []
        for path, idx in ((self.path, self.band_idx), (self.path2, self.band_idx2)):
            if path is None:
                continue
            bands = None if idx is None else [i + 1 for i in idx]
            x, inside, invalid = read_box(path, window, region, bands, self.grid, readers=readers)
            x[:, ~inside | invalid] = np.nan
            out.append(x)
        return out


def open_input(model: TileModel, path: str, path2: str | None) -> RasterInput:
    """Check the input against the checkpoint (bands, dates, overlap) and describe it."""
    if not Path(path).exists():
        raise InputImageError(f"--input {path}: no such file")
    grid, _ = reference_grid(path)
    table = band_table(path)
    names = [name for _, _, name in table]
    idx = None if model.bands is None else resolve_band_indices(model.bands, names, path)
    count = len(table) if idx is None else len(idx)
    if count != model.in_channels:
        raise DensekitError(
            f"--input {path}: {count} bands; the checkpoint {model.checkpoint} was trained on "
            f"{model.in_channels} (bands {model.bands or 'all'})"
        )
    if (model.kind == "change") != (path2 is not None):
        need = "two dates (--input and --input2)" if model.kind == "change" else "one input"
        raise DensekitError(f"the checkpoint is a {model.kind} model and takes {need}")
    idx2 = None
    if path2 is not None:
        if not Path(path2).exists():
            raise InputImageError(f"--input2 {path2}: no such file")
        grid2, _ = reference_grid(path2)
        check_alignable(path2, grid2, grid, path)
        names2 = [name for _, _, name in band_table(path2)]
        if model.bands is not None:  # each date's own positions of the named bands
            idx2 = resolve_band_indices(model.bands, names2, path2)
        elif len(names2) != count:
            raise DensekitError(f"--input2 {path2}: {len(names2)} bands, --input has {count}")
    raster = RasterInput(path, path2, grid, idx, idx2)
    _check_statistics(model, raster)
    return raster


def _check_statistics(model: TileModel, raster: RasterInput, grid: int = 5, side: int = 64) -> None:
    """Warn when the input's band means sit far outside what the model was trained on (another
    unit or scaling, e.g. reflectance x 10000 against 8-bit data). Reads ``grid x grid`` small
    windows spread over the raster: the cost does not depend on its size."""
    task = model.task
    if not hasattr(task, "input_mean"):  # a model without recorded statistics
        return
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
    mean = task.input_mean.flatten().cpu().numpy()
    std = task.input_std.flatten().cpu().numpy()
    z = (means * task.input_scale - mean) / std
    far = [(i, float(v)) for i, v in enumerate(z) if np.isfinite(v) and abs(v) > 4]
    if far:
        bands = ", ".join(f"band {i + 1} at {v:+.1f} std" for i, v in far)
        warnings.warn(
            f"--input {raster.path}: band means far from the checkpoint's training statistics "
            f"({bands}); check the bands and units the model was trained on",
            UserWarning,
            stacklevel=3,
        )
