"""LightningDataModules for segmentation, depth/height and change detection on rasters.

Files are given as a folder, a glob pattern, one file or a list of files; an image may also be a
folder of single-band files (Sentinel-2 as in OSCD: ``..._B04.tif``), read on the grid of its
finest band. Images pair with their targets by file stem (folders) or by what the first run of
wildcards of a pattern matched (``images/*/imgs_1`` and ``labels/*/cm/*-cm.tif`` pair by city;
see :mod:`densekit.data.files`), by position when lists are given; any mismatch is an error that
names the unpaired files. Targets and second dates are read on the first image's grid (see
:mod:`densekit.data.grids`).

Each split either has its own files (``val_*``, ``test_*``) or comes from ``split``: fractions
of every raster's columns, left to right, for training, validation and testing (see
:mod:`densekit.data.windows`); two fractions (training, validation) may go with test files.
With ``window`` the rasters are read as a grid of ``window x window`` windows; without it, each
file is one item (chips of equal size). Windows without a single
labelled (or valid depth) pixel are skipped. Training windows are the same grid (with
``samples_per_epoch``, that many per epoch in a fresh random order: the windows repeated or a
random part of them), or (``train_windows: random``) ``samples_per_epoch`` windows drawn
uniformly in the training blocks; ``augment`` applies flips, rotations and a
per-date gain to training samples (:mod:`densekit.data.augment`).

``label_fraction`` or ``label_count`` keeps a labelled subset of the training windows (or files),
nested and reproducible by ``subset_seed`` and optionally stratified (see
:mod:`densekit.data.subsets`); random training windows are then drawn inside the kept windows
only (pixels outside them are unlabelled).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch

from densekit.data.band_layout import BandLayout
from densekit.data.base import DenseDataModule
from densekit.data.datasets import Sample, WindowDataset, band_table, reference_grid
from densekit.data.files import Files, pair_files
from densekit.data.grids import Grid, check_alignable, grid_of
from densekit.data.label_values import check_label_values
from densekit.data.vectors import is_vector, vector_bounds
from densekit.data.windows import check_split, grid_windows, split_columns
from densekit.errors import DensekitError


class RasterDataModule(DenseDataModule):
    """The raster options and reading of the three raster data modules (not used directly).

    Args (every raster data module):
        split: column fractions (train, val[, test]) of each training raster, instead of
            separate val/test files (test files may go with two fractions).
        window: side of the grid windows (None: whole files).
        bands: image bands in model order, 1-based indices or names (None: all).
        nodata: image nodata value overriding the files' own (None: the files' value).
        target_nodata: nodata value of the raster targets (labels, depths, DSM/nDSM) and the
            ``subtract`` DTMs, overriding the files' own, e.g. -9999 for a fill the files do not
            tag (None: the files' value). Height targets need it for such fills: there, only
            nodata and NaN are invalid.
        train_windows: ``"grid"`` or ``"random"`` training windows (random needs ``window``).
        **kwargs: the settings every data module shares (:class:`DenseDataModule`): batch_size,
            num_workers, samples_per_epoch, augment, label_fraction, label_count, subset_seed,
            stratify.
    """

    n_images: ClassVar[int] = 1

    def __init__(
        self,
        splits: Mapping[str, Sequence[tuple[str, Files]] | None],
        dataset_kwargs: Mapping[str, Any],
        split: list[float] | None = None,
        window: int | None = None,
        bands: list[int | str] | None = None,
        nodata: float | None = None,
        target_nodata: float | None = None,
        train_windows: Literal["grid", "random"] = "grid",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if window is not None and (not isinstance(window, int) or window < 1):
            raise DensekitError(f"data.window {window!r}: give a whole number of pixels >= 1")
        if train_windows == "random" and window is None:
            raise DensekitError("train_windows 'random' needs a window size")
        self.train_windows = train_windows
        check_split(split, bool(splits["val"]), bool(splits["test"]))
        self.split_spec = splits
        self.split = list(split) if split is not None else None
        self.window = window
        self.bands = list(bands) if bands is not None else None
        self._layout: BandLayout | None = None
        self.dataset_kwargs = {
            **dataset_kwargs,
            "nodata": nodata,
            "target_nodata": target_nodata,
        }

    def training_rasters(self) -> BandLayout:
        """The band layout of the first training image (the first date's, for change
        detection): what a checkpoint records of the rasters it was trained on. Every training
        image must share it (an error names the first that does not)."""
        if self._layout is None:
            images = [g[0] for g in pair_files(self.split_spec["train"] or [])]
            if not images:
                raise DensekitError("the training split names no images")
            layout = BandLayout.of(images[0])
            for other in images[1:]:
                found = BandLayout.of(other)
                if found != layout:
                    raise DensekitError(
                        f"training images differ: {images[0]} has {layout.describe()}, "
                        f"{other} has {found.describe()}; train on rasters of one kind"
                    )
            self._layout = layout
        return self._layout

    def check_settings(self) -> None:
        """Refuse a window larger than an image, reading the images' headers only (the CLI
        calls this before the model is built; :meth:`setup` checks it too)."""
        if self.window is None:
            return
        for spec in self.split_spec.values():
            for group in pair_files(spec) if spec else []:
                grid, _ = reference_grid(group[0])
                check_window(self.window, grid, group[0])

    def _samples(self, groups: list[tuple[str, ...]], block_index: int | None) -> list[Sample]:
        samples = []
        size0 = None
        for group in groups:
            images, target = group[: self.n_images], group[self.n_images]
            subtract = group[self.n_images + 1] if len(group) > self.n_images + 1 else None
            grid, ref_path = reference_grid(images[0])
            if self.window is not None:
                check_window(self.window, grid, images[0])
            for other in (*images, target, *([subtract] if subtract else [])):
                if is_vector(other):
                    check_vector_overlap(other, grid, ref_path)
                    continue
                for path in sorted({p for p, _, _ in band_table(other)}):
                    check_alignable(path, grid_of(path), grid, ref_path)
            w, h = grid.width, grid.height
            region = (0, 0, w, h)
            if block_index is not None and self.split is not None:
                region = split_columns(w, h, self.split)[block_index]
            if self.window is None:
                if size0 is not None and (w, h) != size0:
                    raise DensekitError(
                        f"{images[0]} is {w}x{h} but other files are {size0[0]}x{size0[1]}: "
                        "without window, all files of a split must have one size"
                    )
                size0 = (w, h)
                windows = [region]
            else:
                windows = grid_windows(region, self.window)
            samples += [
                Sample(tuple(images), target, win, region, grid, subtract) for win in windows
            ]
        return samples

    def stage_images(self, stage: str) -> list[str]:
        """The image files (every date) that ``validate``, ``test`` or ``predict`` reads: the
        val split, the test split, the test split (else val); read from the train images where
        a fractional ``split`` carves the splits out of them."""
        plan = self._plan()
        names = {"validate": ["val"], "test": ["test"], "predict": ["test", "val"]}[stage]
        name = next((n for n in names if n in plan), None)
        if name is None:
            return []
        groups = plan[name][0]  # each group: the image(s), then the targets
        return list(dict.fromkeys(f for group in groups for f in group[: self.n_images]))

    def _plan(self) -> dict[str, tuple[list[tuple[str, ...]], int | None]]:
        """Each split's image groups and, for a fractional ``split``, its block index."""
        train_groups = pair_files(self.split_spec["train"] or [])
        plan: dict[str, tuple[list[tuple[str, ...]], int | None]] = {}
        if self.split is not None:
            plan["train"] = (train_groups, 0)
            plan["val"] = (train_groups, 1)
            if len(self.split) == 3:
                plan["test"] = (train_groups, 2)
            elif self.split_spec["test"]:
                plan["test"] = (pair_files(self.split_spec["test"]), None)
        else:
            plan["train"] = (train_groups, None)
            for name in ("val", "test"):
                spec = self.split_spec[name]
                if spec:
                    plan[name] = (pair_files(spec), None)
        return plan

    def setup(self, stage: str | None = None) -> None:
        for name, (groups, block) in self._plan().items():
            samples = self._samples(groups, block)
            if not samples:
                raise DensekitError(f"the {name} split is empty")
            dataset = WindowDataset(samples, self.kind, self.bands, **self.dataset_kwargs)
            subset = name == "train" and self.subset.selects
            kept, classes = [], []
            found: set[int] = set()
            for sample in samples:
                item = dataset.read(sample, found if name == "train" else None)
                if dataset.has_data(item):
                    kept.append(sample)
                    if subset and self.subset.stratify and "mask" in item:
                        held = set(torch.unique(item["mask"]).tolist())
                        classes.append(held - {dataset.ignore_index})
            if found:
                check_label_values(
                    found, dataset.ignore_index, dataset.label_map, f"data: the {name} split"
                )
            if not kept:
                raise DensekitError(f"every window of the {name} split is nodata or unlabelled")
            if subset:
                kept = self._subset(kept, classes if classes else None)
            if name == "train" and self.train_windows == "random":
                if subset:  # drawn inside the kept windows only: pixels outside are unlabelled
                    areas = [
                        Sample(s.images, s.target, s.window, s.window, s.grid, s.subtract)
                        for s in kept
                    ]
                else:
                    regions = {(s.images, s.target, s.region): s for s in kept}
                    areas = [
                        Sample(s.images, s.target, s.region, s.region, s.grid, s.subtract)
                        for s in regions.values()
                    ]
                dataset = WindowDataset(
                    areas,
                    self.kind,
                    self.bands,
                    **self.dataset_kwargs,
                    augment=self.augment,
                    random_window=self.window,
                    length=self.loaders.samples_per_epoch or len(kept),
                )
            else:
                dataset = WindowDataset(
                    kept,
                    self.kind,
                    self.bands,
                    **self.dataset_kwargs,
                    augment=self.augment if name == "train" else None,
                )
            self.datasets[name] = dataset

    def _subset(self, kept: list[Sample], classes: list[set[int]] | None) -> list[Sample]:
        """The labelled subset of the training windows (see :mod:`densekit.data.subsets`)."""
        return [kept[i] for i in self._subset_indices(len(kept), classes)]


PADDING_LIMIT = 4  # a window at most this many times an image's longer side


def check_window(window: int, grid: Grid, path: str) -> None:
    """A window more than :data:`PADDING_LIMIT` times the image's longer side is over 15/16
    padding (a 5000-pixel window on a 900-pixel image: 13 minutes of padding per step):
    refused. Windows somewhat larger than small chips are padded as before."""
    most = PADDING_LIMIT * max(grid.width, grid.height)
    if window > most:
        raise DensekitError(
            f"data.window {window}: more than {PADDING_LIMIT} times the longer side of {path} "
            f"({grid.width}x{grid.height}); a window is padded to its full size: give at most "
            f"{most}, or leave window out to read whole files"
        )


def check_vector_overlap(path: str, grid: Grid, ref_path: str) -> None:
    if not grid.georeferenced:
        raise DensekitError(
            f"{path}: vector labels need a georeferenced image; {ref_path} has no CRS"
        )
    west, south, east, north = vector_bounds(path, grid)
    rw, rs, re_, rn = grid.bounds
    if west >= re_ or east <= rw or south >= rn or north <= rs:
        raise DensekitError(
            f"{path} does not overlap {ref_path}: features within ({west:.6g}, {south:.6g}, "
            f"{east:.6g}, {north:.6g}); image: {grid.describe()}"
        )


def _maybe(pairs: list[tuple[str, Files | None]]) -> list[tuple[str, Files]] | None:
    if all(v is None for _, v in pairs):
        return None
    missing = [n for n, v in pairs if v is None]
    if missing:
        raise DensekitError(
            f"{', '.join(missing)} missing: give {' and '.join(n for n, _ in pairs)}"
        )
    return [(n, v) for n, v in pairs if v is not None]


class SegmentationDataModule(RasterDataModule):
    """Image and class-label rasters.

    Args:
        images / labels: training files (folder, pattern, file or list).
        val_images / val_labels, test_images / test_labels: separate split files.
        split: column fractions (train, val[, test]) of each training raster instead.
        window: side of the grid windows (None: whole files).
        bands: image bands in model order, 1-based indices or names (None: all).
        label_map: raw label -> class, e.g. ``{0: 0, 255: 1}`` for 0/255 masks.
        ignore_index: class value ignored by losses and metrics.
        vector_field: labels may be vector files (GeoJSON, shapefile, GeoPackage) rasterised on
            the image grid; the attribute holding the class (None: every feature is class 1).
        sparse_vectors: pixels no feature covers are unlabelled (points, a few polygons)
            instead of background 0 (footprints).
        train_windows: ``"grid"`` or ``"random"`` training windows (random needs ``window``).
        samples_per_epoch: training items per epoch: random windows, or grid windows in a
            fresh random order, repeated or cut to this number (default: each grid window once).
        augment: training augmentation (flips, rotations, gain), or None.
        nodata: image nodata value overriding the files' own (None: the files' value).
        target_nodata: label nodata value overriding the files' own (None: the files' value).
        label_fraction, label_count, subset_seed, stratify: a labelled subset of the training
            windows (see :class:`~densekit.data.base.DenseDataModule`).
    """

    kind = "segmentation"

    def __init__(
        self,
        images: Files,
        labels: Files,
        val_images: Files | None = None,
        val_labels: Files | None = None,
        test_images: Files | None = None,
        test_labels: Files | None = None,
        label_map: dict[int, int] | None = None,
        ignore_index: int = 255,
        vector_field: str | None = None,
        sparse_vectors: bool = False,
        **kwargs: Any,
    ) -> None:
        splits = {
            "train": [("images", images), ("labels", labels)],
            "val": _maybe([("val_images", val_images), ("val_labels", val_labels)]),
            "test": _maybe([("test_images", test_images), ("test_labels", test_labels)]),
        }
        dataset_kwargs = {
            "label_map": label_map,
            "ignore_index": ignore_index,
            "vector_field": vector_field,
            "sparse_vectors": sparse_vectors,
        }
        super().__init__(splits, dataset_kwargs, **kwargs)


class DepthDataModule(RasterDataModule):
    """Image and depth/height rasters; depth <= 0, NaN or nodata is invalid (masked).

    Args as :class:`SegmentationDataModule`, with ``depths`` for ``labels`` and
    ``depth_scale`` multiplying the depth values (e.g. 0.001 for millimetres). For heights above
    ground give ``height: true`` (0 is a valid value) and either nDSM rasters as ``depths``, or
    DSM rasters as ``depths`` with the matching DTM rasters as ``subtract``; then only nodata
    and NaN are invalid, so give ``target_nodata`` for a fill value the files do not tag. The
    task must agree: ``DepthTask(height=...)`` is checked against ``height`` when fitting.
    """

    kind = "depth"

    def __init__(
        self,
        images: Files,
        depths: Files,
        val_images: Files | None = None,
        val_depths: Files | None = None,
        test_images: Files | None = None,
        test_depths: Files | None = None,
        depth_scale: float = 1.0,
        subtract: Files | None = None,
        height: bool = False,
        **kwargs: Any,
    ) -> None:
        if subtract is not None and (val_images is not None or test_images is not None):
            raise DensekitError("subtract (DTM) works with split fractions, not val/test files")
        if subtract is not None and not height:
            raise DensekitError("subtract gives heights above ground: set height: true")
        splits = {
            "train": [("images", images), ("depths", depths)]
            + ([("subtract", subtract)] if subtract is not None else []),
            "val": _maybe([("val_images", val_images), ("val_depths", val_depths)]),
            "test": _maybe([("test_images", test_images), ("test_depths", test_depths)]),
        }
        super().__init__(splits, {"depth_scale": depth_scale, "height": height}, **kwargs)
        self.height = height  # checked against the task's (DepthTask.setup)


class ChangeDataModule(RasterDataModule):
    """Two dates of images on the same grid and a change label raster.

    Args as :class:`SegmentationDataModule`, with ``images1`` / ``images2`` for the two dates.
    Binary change labels are 0 (no change) and 1 (change); use ``label_map`` for others (e.g.
    ``{0: 0, 255: 1}`` or OSCD's ``{1: 0, 2: 1}``). Semantic change uses one class per
    from-to transition.
    """

    kind = "change"
    n_images = 2

    def __init__(
        self,
        images1: Files,
        images2: Files,
        labels: Files,
        val_images1: Files | None = None,
        val_images2: Files | None = None,
        val_labels: Files | None = None,
        test_images1: Files | None = None,
        test_images2: Files | None = None,
        test_labels: Files | None = None,
        label_map: dict[int, int] | None = None,
        ignore_index: int = 255,
        **kwargs: Any,
    ) -> None:
        splits = {
            "train": [("images1", images1), ("images2", images2), ("labels", labels)],
            "val": _maybe(
                [
                    ("val_images1", val_images1),
                    ("val_images2", val_images2),
                    ("val_labels", val_labels),
                ]
            ),
            "test": _maybe(
                [
                    ("test_images1", test_images1),
                    ("test_images2", test_images2),
                    ("test_labels", test_labels),
                ]
            ),
        }
        super().__init__(splits, {"label_map": label_map, "ignore_index": ignore_index}, **kwargs)
