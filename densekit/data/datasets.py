"""Datasets of windows read with rasterio: image(s) plus a label, depth or change target.

Each item reads only its window (``rasterio`` windowed reads), clipped to the sample's region
(its split block). Image pixels outside the region or the raster, or marked as nodata, are NaN
(the task's normalisation turns them into the normalisation mean, 0) and their targets are
ignored (labels: ``ignore_index``; depth: NaN). Other non-finite image values are an error.
Images come out as float32 in the file's units: the task normalises them, so a checkpoint
carries its own normalisation.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rasterio.errors import RasterioIOError
from rasterio.windows import Window
from torch.utils.data import Dataset

from densekit.data.augment import Augmentation
from densekit.data.augment import apply as apply_augmentation
from densekit.data.bands import BandRef, resolve_band_indices
from densekit.data.grids import Grid, grid_of, open_on_grid, open_raster
from densekit.data.keys import item_key
from densekit.data.vectors import is_vector, read_vector_box
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
    grid: Grid
    subtract: str | None = None  # height targets: a DTM subtracted from the target (a DSM)


@functools.lru_cache(maxsize=4096)
def band_table(spec: str) -> list[tuple[str, int, str | None]]:
    """The bands of an image given as one file or as a folder of single-band files.

    Returns ``(path, 1-based index, name)`` per band. In a folder, a band's name is the part of
    its file name after the last ``_`` (``..._B04.tif`` -> ``B04``), bands sorted by number then
    suffix (B08 before B8A before B09).
    """
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".jp2"))
        if not files:
            raise InputImageError(f"{spec}: folder holds no band files (.tif, .jp2)")
        table = []
        for f in files:
            with open_raster(str(f)) as src:
                if src.count != 1:
                    raise InputImageError(
                        f"{f}: a folder of bands needs single-band files; this one has {src.count}"
                    )
            table.append((str(f), 1, f.stem.rsplit("_", 1)[-1]))
        return sorted(table, key=lambda t: _band_key(t[2] or ""))
    with open_raster(spec) as src:
        return [(spec, i + 1, d) for i, d in enumerate(src.descriptions)]


def _band_key(name: str) -> tuple[int, str]:
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits else 0, "".join(c for c in name if not c.isdigit()))


def reference_grid(spec: str) -> tuple[Grid, str]:
    """The grid an image is read on: its own, or its finest band for a folder of bands."""
    paths = sorted({p for p, _, _ in band_table(spec)})
    grids = [(grid_of(p), p) for p in paths]
    return min(grids, key=lambda g: g[0].resolution if g[0].georeferenced else 0.0)


class RasterReaders:
    """Open readers (warped onto a reference grid where needed), kept for many reads.

    At most ``max_open`` stay open (least recently used first to close), so a dataset of many
    files does not run out of file handles. Use one instance per process (DataLoader workers
    each make their own, see :meth:`WindowDataset.readers`).
    """

    def __init__(self, max_open: int = 32) -> None:
        self.max_open = max_open
        self._open: collections.OrderedDict[tuple, tuple[Any, tuple[Any, bool]]] = (
            collections.OrderedDict()
        )

    def get(
        self, path: str, reference: Grid, categorical: bool, nodata: float | None
    ) -> tuple[Any, bool]:
        key = (path, categorical, nodata, reference)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key][1]
        context = open_on_grid(path, reference, categorical, nodata)
        opened = context.__enter__()
        self._open[key] = (context, opened)
        while len(self._open) > self.max_open:
            _, (old, _) = self._open.popitem(last=False)
            old.__exit__(None, None, None)
        return opened

    def close(self) -> None:
        while self._open:
            _, (context, _) = self._open.popitem(last=False)
            context.__exit__(None, None, None)

    def __enter__(self) -> RasterReaders:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_box(
    spec: str,
    window: Box,
    region: Box,
    bands: Sequence[BandRef] | None,
    reference: Grid,
    categorical: bool = False,
    fill: float = 0.0,
    nodata: float | None = None,
    readers: RasterReaders | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``window`` (on the ``reference`` grid) clipped to ``region`` and the grid.

    Returns ``(values (C, h, w) float32, inside (h, w), invalid (h, w))``: ``inside`` marks the
    pixels read; ``invalid`` those any chosen band marks as nodata or does not cover. ``nodata``
    overrides the files' own nodata value (pixels equal to it in any band are invalid, and
    resampling onto the reference grid leaves them out).
    """
    table = band_table(spec)
    idx = (
        list(range(len(table)))
        if bands is None
        else resolve_band_indices(bands, [name for _, _, name in table], spec)
    )
    c0, r0, w, h = window
    out = np.full((len(idx), h, w), fill, np.float32)
    inside = np.zeros((h, w), bool)
    invalid = np.zeros((h, w), bool)
    box = intersect(window, region)
    box = box and intersect(box, (0, 0, reference.width, reference.height))
    if box is None:
        return out, inside, invalid
    bc, br, bw, bh = box
    rw = Window(bc, br, bw, bh)
    ys, xs = slice(br - r0, br - r0 + bh), slice(bc - c0, bc - c0 + bw)
    inside[ys, xs] = True
    by_file: dict[str, list[tuple[int, int]]] = {}
    for k, i in enumerate(idx):
        path, band, _ = table[i]
        by_file.setdefault(path, []).append((k, band))
    try:
        for path, pairs in by_file.items():
            opened = (
                open_on_grid(path, reference, categorical, nodata)
                if readers is None
                else contextlib.nullcontext(readers.get(path, reference, categorical, nodata))
            )
            with opened as (src, warped):
                indexes = [band for _, band in pairs]
                data = src.read(indexes, window=rw)
                for (k, _), plane in zip(pairs, data, strict=True):
                    out[k, ys, xs] = plane
                if nodata is not None:
                    bad = np.isnan(data) if np.isnan(nodata) else data == nodata
                    invalid[ys, xs] |= bad.any(axis=0)
                    if warped:
                        invalid[ys, xs] |= (src.read_masks(indexes, window=rw) == 0).any(axis=0)
                elif warped or any(src.nodatavals[b - 1] is not None for b in indexes):
                    invalid[ys, xs] |= (src.read_masks(indexes, window=rw) == 0).any(axis=0)
    except RasterioIOError as e:
        raise InputImageError(f"{spec}: not a readable raster ({e})") from None
    return out, inside, invalid


class WindowDataset(Dataset):
    """Windows of image/target rasters for one task (see the module docstring).

    Args:
        samples: what to read.
        kind: ``"segmentation"``, ``"depth"`` or ``"change"``.
        bands: 1-based indices or names of the image bands, in model order (None: all).
        label_map: raw label value -> class (e.g. ``{0: 0, 255: 1}``); values not in the map
            are an error naming the file. None keeps the values.
        nodata: image nodata value overriding the files' own (None: the files' value).
        target_nodata: the same for the raster targets (labels, depth, DSM/nDSM) and the
            ``subtract`` DTMs, e.g. an untagged -9999 fill (None: the files' value).
        vector_field, sparse_vectors: for vector label files, the attribute holding the class
            (None: every feature is 1) and whether uncovered pixels are unlabelled (sparse) or
            background 0 (see :mod:`densekit.data.vectors`).
        ignore_index: label of ignored pixels.
        depth_scale: multiplies depth rasters (e.g. 0.001 for millimetres).
        height: height targets (0 and below are valid values; only NaN/nodata are invalid, so
            a fill value the file does not tag needs ``target_nodata``).
        augment, random_window: training augmentation, and the side of windows drawn at random
            in the samples' regions (None: the samples' own windows).
        length: random windows per epoch (default: one per sample); fixed windows are one item
            each (a sampler repeats them).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        kind: TaskKind,
        bands: Sequence[BandRef] | None = None,
        label_map: Mapping[int, int] | None = None,
        ignore_index: int = 255,
        depth_scale: float = 1.0,
        augment: Augmentation | None = None,
        random_window: int | None = None,
        length: int | None = None,
        vector_field: str | None = None,
        sparse_vectors: bool = False,
        nodata: float | None = None,
        height: bool = False,
        target_nodata: float | None = None,
    ) -> None:
        self.nodata = nodata
        self.target_nodata = target_nodata
        self.height = height
        self.vector_field = vector_field
        self.sparse_vectors = sparse_vectors
        self.samples = list(samples)
        self.kind = kind
        self.bands = bands
        self.label_map = dict(label_map) if label_map is not None else None
        self.ignore_index = ignore_index
        self.depth_scale = depth_scale
        self.transforms = augment.build() if augment is not None else None
        self.random_window = random_window
        self.length = length if length is not None and random_window else len(self.samples)
        areas = np.array([s.region[2] * s.region[3] for s in self.samples], np.float64)
        self.weights = torch.from_numpy(areas / areas.sum()) if len(areas) else None

    def __len__(self) -> int:
        return self.length

    def _draw(self) -> Sample:
        """A random window of side ``random_window`` in a region (regions weighted by area)."""
        if self.weights is None or not self.random_window:
            raise DensekitError("random windows need at least one region and a window size")
        s = self.samples[int(torch.multinomial(self.weights, 1))]
        c0, r0, w, h = s.region
        size = self.random_window
        col = c0 + int(torch.randint(0, max(w - size, 0) + 1, ()))
        row = r0 + int(torch.randint(0, max(h - size, 0) + 1, ()))
        return Sample(s.images, s.target, (col, row, size, size), s.region, s.grid, s.subtract)

    def readers(self) -> RasterReaders:
        """This process's open readers (files stay open between windows; a DataLoader worker,
        a forked copy of the dataset, opens its own)."""
        if getattr(self, "_readers_pid", None) != os.getpid():
            self._readers = RasterReaders()
            self._readers_pid = os.getpid()
        return self._readers

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # open files do not travel to spawned workers
        state.pop("_readers", None)
        state.pop("_readers_pid", None)
        return state

    def has_data(self, item: dict[str, Any]) -> bool:
        """Whether an item holds any usable target pixel (all-nodata windows are skipped)."""
        if "mask" in item:
            return bool((item["mask"] != self.ignore_index).any())
        if "depth" in item:
            return bool(torch.isfinite(item["depth"]).any())
        return True

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.length:
            raise IndexError(f"item {i} of {self.length}")  # ends iteration over the dataset
        if self.random_window:
            for _ in range(20):
                item = self.read(self._draw())
                if self.has_data(item):
                    break
        else:
            sample = self.samples[i]
            item = self.read(sample)
            if self.transforms is None:  # a fixed, unaugmented window: its features can be cached
                item["cache_keys"] = self.cache_keys(sample)
        if self.transforms is not None:
            item = apply_augmentation(item, self.transforms)
        return item

    def cache_keys(self, s: Sample) -> list[str]:
        """The data side of the feature-cache key of each date (:mod:`densekit.models.cache`)."""
        extra = {"bands": self.bands, "nodata": self.nodata, "grid": s.grid.describe()}
        return [
            item_key(sorted({p for p, _, _ in band_table(spec)}), s.window, s.region, extra)
            for spec in s.images
        ]

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

    def read(self, s: Sample, label_values: set[int] | None = None) -> dict[str, Any]:
        """Read one sample's images and target; the raw label values of its labelled pixels
        (not its nodata, outside or padding) are added to ``label_values`` when given."""
        item: dict[str, Any] = {
            "path": s.target or s.images[0],
            "image_path": s.images[0],
            "window": torch.tensor(s.window),
        }
        images = []
        valid = np.ones((s.window[3], s.window[2]), bool)
        for path in s.images:
            x, inside, nodata = read_box(
                path,
                s.window,
                s.region,
                self.bands,
                s.grid,
                nodata=self.nodata,
                readers=self.readers(),
            )
            usable = inside & ~nodata
            if not np.isfinite(x[:, usable]).all():
                raise InputImageError(
                    f"{path}: NaN or infinite pixel values in window {s.window} that the file "
                    "does not mark as nodata; set the file's nodata value (e.g. gdal_edit.py "
                    "-a_nodata nan) so they are ignored"
                )
            x[:, ~usable] = np.nan  # the task fills them with the normalisation mean
            images.append(torch.from_numpy(x))
            valid &= usable
        if self.kind == "change":
            item["image1"], item["image2"] = images
        else:
            item["image"] = images[0]
        if s.target is None:
            return item
        if is_vector(s.target):
            raw, inside, target_nodata = read_vector_box(
                s.target, s.window, s.region, s.grid, self.vector_field, self.sparse_vectors
            )
        else:
            raw, inside, target_nodata = read_box(
                s.target,
                s.window,
                s.region,
                [1],
                s.grid,
                categorical=self.kind != "depth",
                nodata=self.target_nodata,
                readers=self.readers(),
            )
        valid &= inside & ~target_nodata  # the target's own nodata is no label either
        if self.kind == "depth":
            depth = raw[0] * np.float32(self.depth_scale)
            if s.subtract is not None:  # height above ground: DSM - DTM
                dtm, dtm_inside, dtm_nodata = read_box(
                    s.subtract,
                    s.window,
                    s.region,
                    [1],
                    s.grid,
                    nodata=self.target_nodata,
                    readers=self.readers(),
                )
                depth = depth - dtm[0] * np.float32(self.depth_scale)
                valid &= dtm_inside & ~dtm_nodata
            bad = ~valid | ~np.isfinite(depth)
            if not self.height:
                bad |= depth <= 0  # a depth of 0 or less is invalid; a height of 0 is ground
            item["depth"] = torch.from_numpy(np.where(bad, np.nan, depth)[None].astype(np.float32))
        else:
            if not np.isfinite(raw[0][inside & ~target_nodata]).all():
                raise DensekitError(f"{s.target}: label raster holds NaN/inf values")
            labels = np.full(raw[0].shape, self.ignore_index, np.int64)
            labels[valid] = self._map_labels(raw[0][valid], s.target)
            if label_values is not None:
                label_values.update(int(v) for v in np.unique(raw[0][valid]))
            item["mask"] = torch.from_numpy(labels)
        return item
