"""Datasets of windows read with rasterio: image(s) plus a label, depth or change target.

Each item reads only its window (``rasterio`` windowed reads), clipped to the sample's region
(its split block); pixels outside the region or the raster are filled (images: 0) and their
targets are ignored (labels: ``ignore_index``; depth: NaN). Pixels an image band marks as nodata
are ignored in the target too. Images come out as float32 in the file's units: the task
normalises them, so a checkpoint carries its own normalisation.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window
from torch.utils.data import Dataset

from densekit.data.bands import BandRef, resolve_band_indices
from densekit.data.windows import Box, intersect
from densekit.errors import DensekitError, InputImageError

TaskKind = Literal["segmentation", "depth", "change"]


@dataclass(frozen=True)
class Sample:
    """What one item reads: the images (one per date), the target, the window and its region."""

    images: tuple[str, ...]
    target: str | None
    window: Box
    region: Box


def raster_size(path: str) -> tuple[int, int]:
    """``(width, height)`` of a raster; errors name the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.width, src.height
    except RasterioIOError as e:
        raise InputImageError(f"{path}: not a readable raster ({e})") from None


def read_box(
    path: str, window: Box, region: Box, bands: Sequence[BandRef] | None, fill: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``window`` clipped to ``region`` and the raster.

    Returns ``(values (C, h, w) float32, inside (h, w), nodata (h, w))``: ``inside`` marks the
    pixels read; ``nodata`` those any chosen band marks as nodata.
    """
    c0, r0, w, h = window
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                idx = (
                    list(range(src.count))
                    if bands is None
                    else resolve_band_indices(bands, list(src.descriptions), path)
                )
                out = np.full((len(idx), h, w), fill, np.float32)
                inside = np.zeros((h, w), bool)
                nodata = np.zeros((h, w), bool)
                box = intersect(window, region)
                box = box and intersect(box, (0, 0, src.width, src.height))
                if box is None:
                    return out, inside, nodata
                bc, br, bw, bh = box
                rw = Window(bc, br, bw, bh)
                ys, xs = slice(br - r0, br - r0 + bh), slice(bc - c0, bc - c0 + bw)
                indexes = [i + 1 for i in idx]
                out[:, ys, xs] = src.read(indexes, window=rw).astype(np.float32)
                inside[ys, xs] = True
                if any(src.nodatavals[i] is not None for i in idx):
                    nodata[ys, xs] = (src.read_masks(indexes, window=rw) == 0).any(axis=0)
    except RasterioIOError as e:
        raise InputImageError(f"{path}: not a readable raster ({e})") from None
    return out, inside, nodata


class WindowDataset(Dataset):
    """Windows of image/target rasters for one task (see the module docstring).

    Args:
        samples: what to read.
        kind: ``"segmentation"``, ``"depth"`` or ``"change"``.
        bands: 1-based indices or names of the image bands, in model order (None: all).
        label_map: raw label value -> class (e.g. ``{0: 0, 255: 1}``); values not in the map
            are an error naming the file. None keeps the values.
        ignore_index: label of ignored pixels.
        depth_scale: multiplies depth rasters (e.g. 0.001 for millimetres).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        kind: TaskKind,
        bands: Sequence[BandRef] | None = None,
        label_map: Mapping[int, int] | None = None,
        ignore_index: int = 255,
        depth_scale: float = 1.0,
    ) -> None:
        self.samples = list(samples)
        self.kind = kind
        self.bands = bands
        self.label_map = dict(label_map) if label_map is not None else None
        self.ignore_index = ignore_index
        self.depth_scale = depth_scale

    def __len__(self) -> int:
        return len(self.samples)

    def _map_labels(self, raw: np.ndarray, path: str) -> np.ndarray:
        if self.label_map is None:
            return raw.astype(np.int64)
        if raw.size == 0:
            return raw.astype(np.int64)
        values = np.unique(raw)
        unknown = [int(v) for v in values if int(v) not in self.label_map]
        if unknown:
            raise DensekitError(
                f"{path}: label value(s) {unknown[:10]} are not in label_map {self.label_map}"
            )
        keys = np.array(sorted(self.label_map), np.int64)
        classes = np.array([self.label_map[k] for k in keys], np.int64)
        return classes[np.searchsorted(keys, raw.astype(np.int64))]

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        item: dict[str, Any] = {
            "path": s.target or s.images[0],
            "image_path": s.images[0],
            "window": torch.tensor(s.window),
        }
        images = []
        valid = np.ones((s.window[3], s.window[2]), bool)
        for path in s.images:
            x, inside, nodata = read_box(path, s.window, s.region, self.bands, 0.0)
            images.append(torch.from_numpy(x))
            valid &= inside & ~nodata
        if self.kind == "change":
            item["image1"], item["image2"] = images
        else:
            item["image"] = images[0]
        if s.target is None:
            return item
        raw, inside, target_nodata = read_box(s.target, s.window, s.region, [1], 0.0)
        valid &= inside & ~target_nodata  # the target's own nodata is no label either
        if self.kind == "depth":
            depth = raw[0] * np.float32(self.depth_scale)
            bad = ~valid | ~np.isfinite(depth) | (depth <= 0)  # invalid depth: masked
            item["depth"] = torch.from_numpy(np.where(bad, np.nan, depth)[None].astype(np.float32))
        else:
            if not np.isfinite(raw[0][inside & ~target_nodata]).all():
                raise DensekitError(f"{s.target}: label raster holds NaN/inf values")
            labels = np.full(raw[0].shape, self.ignore_index, np.int64)
            labels[valid] = self._map_labels(raw[0][valid], s.target)
            item["mask"] = torch.from_numpy(labels)
        return item
