"""The data of ``benchmarks/pixel_detail.py``: the five sets read whole through densekit's
readers, their splits, per-band statistics, random training windows and test tiles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from densekit.data.datasets import Sample, TaskKind, WindowDataset, reference_grid
from densekit.data.windows import split_columns

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
IGNORE = 255
WINDOW = 128  # training windows (a multiple of 16 and 32)
TILE = 256  # test tiles


# -- data --------------------------------------------------------------------------------------
@dataclass
class Region:
    """One labelled area: an image per date ``(C, H, W)`` float32 (NaN = nodata) and a mask
    ``(H, W)`` int64 (``IGNORE`` = unlabelled)."""

    images: list[np.ndarray]
    mask: np.ndarray

    def crop(self, c0: int, c1: int) -> Region:
        return Region([x[:, :, c0:c1] for x in self.images], self.mask[:, c0:c1])


@dataclass
class SetSpec:
    """A benchmark set: how to read it, what the backbone sees, how it is scored."""

    title: str
    kind: str  # "segmentation" or "change"
    positive: str  # name of the class of interest
    rgb: list[int]  # indices of the set's bands the backbone sees, in its order
    upscale: float  # input_upscale of the option variants
    loss: str
    load: Callable[[], tuple[list[Region], list[Region]]]
    metric: str = field(init=False)

    def __post_init__(self) -> None:
        self.metric = "f1" if self.kind == "change" else f"iou_{self.positive}"


def read_region(images: list[str], label: str, label_map: dict[int, int]) -> Region:
    """A whole raster through densekit's readers (bands on the first image's grid)."""
    grid, _ = reference_grid(images[0])
    box = (0, 0, grid.width, grid.height)
    kind: TaskKind = "change" if len(images) == 2 else "segmentation"
    dataset = WindowDataset([], kind, label_map=label_map, ignore_index=IGNORE)
    item = dataset.read(Sample(tuple(images), label, box, box, grid))
    dataset.readers().close()
    keys = ["image1", "image2"] if kind == "change" else ["image"]
    return Region([item[k].numpy() for k in keys], item["mask"].numpy())


def column_split(region: Region) -> tuple[list[Region], list[Region]]:
    """Left 60 % of the columns for training, right 40 % for testing."""
    w = region.mask.shape[1]
    (c0, _, w0, _), (c1, _, w1, _) = split_columns(w, region.mask.shape[0], [0.6, 0.4])
    return [region.crop(c0, c0 + w0)], [region.crop(c1, c1 + w1)]


def load_sen1floods11() -> tuple[list[Region], list[Region]]:
    d = DATA / "sen1floods11-sample"
    image, label = d / "S2/Spain_7370579_S2Hand.tif", d / "Labels/Spain_7370579_LabelHand.tif"
    return column_split(read_region([str(image)], str(label), {-1: IGNORE, 0: 0, 1: 1}))


def load_spacenet(image: str, label: str) -> tuple[list[Region], list[Region]]:
    d = DATA / "spacenet-solaris-samples"
    return column_split(read_region([str(d / image)], str(d / label), {0: 0, 255: 1}))


def load_oscd() -> tuple[list[Region], list[Region]]:
    d = DATA / "oscd-subset"

    def city(name: str) -> Region:
        folders = [str(d / "images" / name / f"imgs_{k}") for k in (1, 2)]
        return read_region(folders, str(d / f"train_labels/{name}/cm/{name}-cm.tif"), {1: 0, 2: 1})

    return [city("aguasclaras"), city("bercy")], [city("bordeaux"), city("hongkong")]


def load_levir() -> tuple[list[Region], list[Region]]:
    d = DATA / "levir-cd-samples"

    def pair(name: str) -> Region:
        images = [str(d / k / f"{name}.png") for k in ("A", "B")]
        return read_region(images, str(d / "label" / f"{name}.png"), {0: 0, 255: 1})

    train = ["train_36_0512_0512", "train_386_0512_0768", "train_412_0512_0768", "val_27_0000_0256"]
    return [pair(n) for n in train], [pair(n) for n in ("test_2_0000_0000", "test_2_0000_0512")]


# Upscale: 2 on 10 m Sentinel-2 (a 16-pixel patch is 160 m) and on the roads (a few metres
# wide, under one 4.8 m patch); 2 on the 0.5 m sets too (an 8 m patch is about a house).
SETS: dict[str, SetSpec] = {
    "sen1floods11": SetSpec(
        "Sen1Floods11 water IoU", "segmentation", "water", [3, 2, 1], 2.0, "ce", load_sen1floods11
    ),
    "roads": SetSpec(
        "SpaceNet roads IoU",
        "segmentation",
        "road",
        [0, 0, 0],
        2.0,
        "ce+dice",
        lambda: load_spacenet("roads/road_mask_input.tif", "roads/sample_road_raster_mask.tif"),
    ),
    "buildings": SetSpec(
        "SpaceNet buildings IoU",
        "segmentation",
        "building",
        [0, 0, 0],
        2.0,
        "ce+dice",
        lambda: load_spacenet(
            "buildings_atlanta/sample_geotiff.tif",
            "buildings_atlanta/sample_fp_mask_from_geojson.tif",
        ),
    ),
    "oscd": SetSpec("OSCD change F1", "change", "change", [3, 2, 1], 2.0, "bce+dice", load_oscd),
    "levir": SetSpec(
        "LEVIR-CD change F1", "change", "change", [0, 1, 2], 2.0, "bce+dice", load_levir
    ),
}


def band_stats(regions: list[Region], bands: list[int]) -> tuple[list[float], list[float]]:
    """Per-band mean and std over the valid training pixels of every date."""
    values = [x[bands].reshape(len(bands), -1) for r in regions for x in r.images]
    stacked = np.concatenate(values, axis=1)
    mean = np.nanmean(stacked, axis=1)
    std = np.maximum(np.nanstd(stacked, axis=1), 1e-6)
    return [float(v) for v in mean], [float(v) for v in std]


class RandomWindows(Dataset):
    """``length`` random ``WINDOW``-sized windows of the training regions (weighted by area),
    each flipped at random; windows without a labelled pixel are drawn again."""

    def __init__(self, regions: list[Region], bands: list[int], length: int = 64) -> None:
        self.regions, self.bands, self.length = regions, bands, length
        areas = torch.tensor([float(r.mask.size) for r in regions])
        self.weights = areas / areas.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        for _ in range(20):
            r = self.regions[int(torch.multinomial(self.weights, 1))]
            h, w = r.mask.shape
            row = int(torch.randint(0, max(h - WINDOW, 0) + 1, ()))
            col = int(torch.randint(0, max(w - WINDOW, 0) + 1, ()))
            mask = np.full((WINDOW, WINDOW), IGNORE, np.int64)
            crop = r.mask[row : row + WINDOW, col : col + WINDOW]
            mask[: crop.shape[0], : crop.shape[1]] = crop
            if (mask != IGNORE).any():
                break
        images = []
        for x in r.images:
            window = np.full((len(self.bands), WINDOW, WINDOW), np.nan, np.float32)
            part = x[self.bands, row : row + WINDOW, col : col + WINDOW]
            window[:, : part.shape[1], : part.shape[2]] = part
            images.append(torch.from_numpy(window))
        target = torch.from_numpy(mask)
        flips = [d for d, p in ((-1, torch.rand(())), (-2, torch.rand(()))) if p < 0.5]
        if flips:
            images = [x.flip(flips) for x in images]
            target = target.flip(flips)  # the same dims: (H, W) ends as (C, H, W) does
        return pack(images, target)


def pack(images: list[torch.Tensor], mask: torch.Tensor) -> dict[str, Any]:
    if len(images) == 2:
        return {"image1": images[0], "image2": images[1], "mask": mask}
    return {"image": images[0], "mask": mask}


class Tiles(Dataset):
    """Tiles of ``TILE`` pixels a side (or the region's side) covering every test region. The
    last row and column of tiles are shifted back inside the region (a sliver would be smaller
    than a patch); the pixels they share with the tiles before are unlabelled there, so every
    test pixel is scored once."""

    def __init__(self, regions: list[Region], bands: list[int]) -> None:
        self.regions, self.bands = regions, bands
        self.boxes = [
            (k, r0, c0)
            for k, r in enumerate(regions)
            for r0 in range(0, r.mask.shape[0], TILE)
            for c0 in range(0, r.mask.shape[1], TILE)
        ]

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k, r0, c0 = self.boxes[i]
        r = self.regions[k]
        h, w = r.mask.shape
        r1, c1 = min(r0, max(h - TILE, 0)), min(c0, max(w - TILE, 0))  # shifted back
        rows, cols = slice(r1, r1 + TILE), slice(c1, c1 + TILE)
        images = [
            torch.from_numpy(np.ascontiguousarray(x[self.bands, rows, cols])) for x in r.images
        ]
        mask = r.mask[rows, cols].copy()
        mask[: r0 - r1] = IGNORE  # scored by the tile above
        mask[:, : c0 - c1] = IGNORE  # scored by the tile to the left
        return pack(images, torch.from_numpy(mask))
