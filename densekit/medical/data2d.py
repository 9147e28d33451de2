"""2D image/mask sets (PNG, JPEG), and the in-memory loading both medical data modules share.

:class:`Medical2DDataModule`: image files (PNG or JPEG, 8 or 16 bit, grey or RGB) and mask files
paired by name as in the raster modules (:mod:`densekit.data.files`: folders pair by file stem,
patterns by what their wildcards matched, lists in order). Masks are read by
:func:`~densekit.data.masks.read_png_mask` (lossy JPEG masks need ``threshold``); ``size``
resizes both (image bilinear, mask nearest). Every pair is read once in ``setup`` and held in
memory (fine for sample sets). The raster ``SegmentationDataModule`` cannot read such sets:
JPEG masks need a threshold and the frames differ in size.

Items: ``image`` float32 (3, H, W) in [0, 1] (the task uses the backbone's statistics with
``scale: 1``), ``mask`` int64 (H, W), ``path`` (the image file), ``cache_keys`` when
unaugmented. A batch of different sizes is padded at the bottom and right (image 0, mask
``ignore_index``). Pairs without a labelled pixel are skipped. ``split`` cuts the pairs (shuffled
by ``split_seed``) into train, val[, test]; these sets carry no patient identity, so frames of
one patient (e.g. one colonoscopy) may land in several splits: give val/test files to avoid it.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from densekit.data.augment import Augmentation
from densekit.data.augment import apply as apply_augmentation
from densekit.data.base import DenseDataModule
from densekit.data.files import Files, pair_files
from densekit.data.keys import item_key
from densekit.data.label_values import check_label_values
from densekit.data.masks import read_png_mask
from densekit.data.rgb import read_rgb
from densekit.data.subsets import nested_order
from densekit.data.windows import check_split, split_columns
from densekit.errors import DensekitError
from densekit.medical.classes import map_values

SPLITS = ("train", "val", "test")


def pad_collate(items: list[dict[str, Any]], ignore_index: int) -> dict[str, Any]:
    """Batch items, padding images (0) and masks (``ignore_index``) to the largest H, W."""
    h = max(int(it["image"].shape[-2]) for it in items)
    w = max(int(it["image"].shape[-1]) for it in items)
    for it in items:
        dh, dw = h - it["image"].shape[-2], w - it["image"].shape[-1]
        if dh or dw:
            pad = (0, dw, 0, dh)
            it["image"] = torch.nn.functional.pad(it["image"], pad, value=0.0)
            it["mask"] = torch.nn.functional.pad(it["mask"], pad, value=ignore_index)
    return default_collate(items)


def split_parts(n: int, fractions: list[float], seed: int | None) -> list[list[int]]:
    """``range(n)`` cut by ``fractions`` (as :func:`~densekit.data.windows.split_columns`
    cuts columns), after a shuffle by ``seed`` (None: in order, as contiguous blocks)."""
    order = list(range(n)) if seed is None else nested_order(n, seed)
    blocks = split_columns(n, 1, fractions)
    return [sorted(order[c0 : c0 + w]) for c0, _, w, _ in blocks]


class InMemoryDataModule(DenseDataModule):
    """Loaders of the in-memory medical data modules (not used directly): pad-collated
    batches, per-worker augmentation seeds; predictions go through ``densekit volume``."""

    kind = "segmentation"
    ignore_index: int

    split_files = "{name} cases/files"

    @property
    def collate_fn(self) -> Any:  # batches of slices of different sizes are padded
        return functools.partial(pad_collate, ignore_index=self.ignore_index)

    def predict_dataloader(self) -> DataLoader:
        raise DensekitError(
            "densekit predict writes georeferenced rasters; for medical data use "
            "`densekit volume --checkpoint CKPT --input ...` or `densekit test`"
        )


class ImageDataset(Dataset):
    """In-memory 2D items (``image``, ``mask``, ``path``), augmented when ``augment`` is given."""

    def __init__(self, items: list[dict[str, Any]], augment: Augmentation | None = None) -> None:
        self.items = items
        self.transforms = augment.build() if augment is not None else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.items[i])
        if self.transforms is not None:
            item.pop("cache_keys", None)
            return apply_augmentation(item, self.transforms)
        return item


class Medical2DDataModule(InMemoryDataModule):
    """2D medical images and their masks (see the module docstring).

    Args:
        images / masks: training files (folder, pattern, file or list).
        val_images / val_masks, test_images / test_masks: separate split files.
        split: fractions (train, val[, test]) of the training pairs, instead of val/test files
            (two fractions may go with test files).
        split_seed: the shuffle of the pairs before ``split``.
        label_map: raw mask value -> class, e.g. ``{0: 0, 255: 1}``; every value must be listed
            (None: the values are the classes).
        threshold: masks are ``value >= threshold`` (0/1) first; needed for JPEG masks.
        size: ``[height, width]`` (or one side for squares) every pair is resized to.
        ignore_index: the mask value of unlabelled pixels.
        **kwargs: the settings every data module shares (:class:`~densekit.data.base.
            DenseDataModule`): batch_size, num_workers, samples_per_epoch, augment,
            label_fraction, label_count, subset_seed, stratify.
    """

    def __init__(
        self,
        images: Files,
        masks: Files,
        val_images: Files | None = None,
        val_masks: Files | None = None,
        test_images: Files | None = None,
        test_masks: Files | None = None,
        split: list[float] | None = None,
        split_seed: int = 0,
        label_map: dict[int, int] | None = None,
        threshold: int | None = None,
        size: int | list[int] | None = None,
        ignore_index: int = 255,
        **kwargs: Any,
    ) -> None:
        splits = {
            "train": [("images", images), ("masks", masks)],
            "val": _both("val", val_images, val_masks),
            "test": _both("test", test_images, test_masks),
        }
        super().__init__(**kwargs)
        check_split(split, bool(splits["val"]), bool(splits["test"]))
        self.split_spec = splits
        self.split = list(split) if split is not None else None
        sides = [size, size] if isinstance(size, int) else size
        if sides is not None and (len(sides) != 2 or min(sides) < 1):
            raise DensekitError(f"size {size}: give [height, width] or one side, >= 1 pixel")
        self.size = sides
        self.split_seed = split_seed
        self.label_map = label_map
        self.threshold = threshold
        self.ignore_index = ignore_index

    def _read(self, image: str, mask: str) -> dict[str, Any]:
        x = torch.from_numpy(read_rgb(image))
        raw = read_png_mask(mask, self.threshold)
        labels = raw.astype(np.int64)
        if self.label_map is not None:
            labels = map_values(raw, self.label_map, None, mask).astype(np.int64)
        if labels.shape != tuple(x.shape[1:]):
            raise DensekitError(
                f"{mask} is {labels.shape[1]}x{labels.shape[0]} pixels but {image} is "
                f"{x.shape[2]}x{x.shape[1]}: masks must be the size of their image"
            )
        y = torch.from_numpy(labels)
        if self.size is not None:
            size = (int(self.size[0]), int(self.size[1]))
            x = torch.nn.functional.interpolate(
                x[None], size, mode="bilinear", antialias=True, align_corners=False
            )[0].clamp(0, 1)
            y = torch.nn.functional.interpolate(y[None, None].float(), size, mode="nearest-exact")
            y = y[0, 0].long()
        h, w = x.shape[1:]
        key = item_key([image], [0, 0, w, h], [0, 0, w, h], {"size": self.size, "medical2d": 1})
        return {"image": x, "mask": y, "path": image, "cache_keys": [key]}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return  # read once, held in memory
        pairs = pair_files(self.split_spec["train"] or [])
        plan: dict[str, list[tuple[str, ...]]] = {"train": pairs}
        if self.split is not None:
            parts = split_parts(len(pairs), self.split, self.split_seed)
            plan = {
                name: [pairs[i] for i in part]
                for name, part in zip(SPLITS[: len(parts)], parts, strict=True)
            }
        for name in ("val", "test"):
            spec = self.split_spec[name]
            if spec and name not in plan:
                plan[name] = pair_files(spec)
        for name, members in plan.items():
            items = [self._read(image, mask) for image, mask in members]
            if name == "train":
                found = set().union(*(torch.unique(it["mask"]).tolist() for it in items))
                check_label_values(found, self.ignore_index, self.label_map, "the train masks")
            items = [it for it in items if (it["mask"] != self.ignore_index).any()]
            if not items:
                raise DensekitError(f"the {name} split has no pair with a labelled pixel")
            if name == "train":
                classes = [
                    set(torch.unique(it["mask"]).tolist()) - {self.ignore_index} for it in items
                ]
                items = [items[j] for j in self._subset_indices(len(items), classes)]
            augment = self.augment if name == "train" else None
            self.datasets[name] = ImageDataset(items, augment)


def _both(name: str, images: Files | None, masks: Files | None) -> list[tuple[str, Files]] | None:
    if (images is None) != (masks is None):
        raise DensekitError(f"{name}_images and {name}_masks go together: give both")
    if images is None or masks is None:
        return None
    return [(f"{name}_images", images), (f"{name}_masks", masks)]
