#!/usr/bin/env python3
"""Generate the tiny training chips in this folder (rewrites them; deterministic).

* ``seg/{images,labels}``: 60x60 RGB uint8 GeoTIFFs (UTM 33N) with bright squares (class 1) and
  dark discs (class 2) on a textured background (class 0); a few label pixels are 255 (ignore).
* ``depth/{images,depths}``: images whose brightness falls with depth; float32 depth in metres
  (1..5 m) with a NaN patch and a zero patch (invalid).
* ``change/{a,b,labels}``: pairs where bright squares appear in date 2 (label 1 = change).
Split: chips 0-7 for training, 8-11 for validation (``*_val`` folders).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

HERE = Path(__file__).resolve().parent
SIZE = 60


def write(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=data.shape[1],
        width=data.shape[2],
        count=data.shape[0],
        dtype=data.dtype.name,
        crs="EPSG:32633",
        transform=from_origin(500000, 4600000, 1, 1),
    ) as dst:
        dst.write(data)


def background(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(110, 12, (3, SIZE, SIZE))


def shapes(rng: np.random.Generator, img: np.ndarray, label: np.ndarray, with_discs: bool) -> None:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for _ in range(3):
        r, c, s = rng.integers(0, SIZE - 16), rng.integers(0, SIZE - 16), rng.integers(10, 16)
        img[:, r : r + s, c : c + s] = rng.normal(220, 8, (3, s, s))
        label[r : r + s, c : c + s] = 1
    if with_discs:
        for _ in range(2):
            r, c = rng.integers(10, SIZE - 10, 2)
            disc = (yy - r) ** 2 + (xx - c) ** 2 < 7**2
            img[:, disc] = rng.normal(25, 6, (3, int(disc.sum())))
            label[disc] = 2


def main() -> None:
    rng = np.random.default_rng(0)
    for sub in ("seg", "depth", "change"):
        shutil.rmtree(HERE / sub, ignore_errors=True)
    for i in range(12):
        split = "" if i < 8 else "_val"
        name = f"chip{i:02d}.tif"
        # segmentation
        img, label = background(rng), np.zeros((SIZE, SIZE), np.uint8)
        shapes(rng, img, label, with_discs=True)
        label[:2, :] = 255
        write(HERE / f"seg/images{split}" / name, np.clip(img, 0, 255).astype(np.uint8))
        write(HERE / f"seg/labels{split}" / name, label)
        # depth: a tilted plane plus a box, brightness falls with depth
        yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
        depth = 1 + 3 * (0.6 * yy + 0.4 * rng.random() * xx)
        r, c = rng.integers(5, SIZE - 20, 2)
        depth[r : r + 15, c : c + 15] -= 0.5
        tone = 230 - 45 * depth + rng.normal(0, 3, depth.shape)
        img = np.stack([tone, tone * 0.9, tone * 0.8])
        target = depth.astype(np.float32)
        target[-6:, -6:] = np.nan
        target[:4, -6:] = 0
        write(HERE / f"depth/images{split}" / name, np.clip(img, 0, 255).astype(np.uint8))
        write(HERE / f"depth/depths{split}" / name, target)
        # change
        before = background(rng)
        after = before + rng.normal(0, 4, before.shape)
        change = np.zeros((SIZE, SIZE), np.uint8)
        shapes(rng, after, change, with_discs=False)
        write(HERE / f"change/a{split}" / name, np.clip(before, 0, 255).astype(np.uint8))
        write(HERE / f"change/b{split}" / name, np.clip(after, 0, 255).astype(np.uint8))
        write(HERE / f"change/labels{split}" / name, change)
    print(f"wrote chips to {HERE}")


if __name__ == "__main__":
    main()
