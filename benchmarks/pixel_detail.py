#!/usr/bin/env python3
"""Pixel detail: densekit's heads with and without the resolution options, against per-pixel
and U-Net baselines, on five real sets; one table, measured in one run.

Sets (read in place from ../shared/data) and metrics:

* ``sen1floods11``: the Sen1Floods11 chip, Sentinel-2 13 bands (label -1 = nodata, ignored);
  left 60 % of the columns train, right 40 % test; water IoU.
* ``roads`` / ``buildings``: SpaceNet Las Vegas roads / Atlanta footprints (pan); the same
  column split; IoU of the road / building class.
* ``oscd``: OSCD, 13 bands per date (20/60 m bands resampled bilinearly onto the 10 m grid by
  densekit's readers); train on aguasclaras + bercy, test on bordeaux + hongkong; change F1.
* ``levir``: LEVIR-CD samples (RGB); train on train_36, train_386, train_412, val_27, test on
  the two test_2 tiles; change F1.

Methods: ``logreg`` and ``rf`` (scikit-learn, per pixel on all bands; change: [date 1, date 2,
date 2 - date 1]; a stratified, seeded subsample of the training pixels, every test pixel
predicted); ``unet`` (densekit's ``head: unet``, ResNet-18 encoder from scratch on all bands);
``linear`` / ``dpt`` on the bundled ``densekit_vitt16`` backbone (which sees 3 bands: B4, B3, B2
of Sentinel-2, the pan band repeated, LEVIR's RGB), plain and with ``+upscale``
(``input_upscale``), ``+guided`` (``upsampler: guided``), ``+pixel`` (``pixel_branch``) and
``+all``. The option variants take every band of the set (``backbone_bands`` picks the three the
backbone sees); the plain heads take only those three.

Every trained method (U-Net and heads) gets the same wall-time budget (``Trainer(max_time)``):
random windows of the training region with random flips, batch 8, AdamW, linear warm-up then a
constant learning rate (a cosine needs a known step count). The test regions are evaluated once,
in non-overlapping tiles, with the task's own metrics (``ConfusionMetrics``); the per-pixel
baselines are scored with the same metric class. Each cell shows the metric and the wall time of
that run (fit + test). The last row is the best densekit head minus the best baseline.

Usage:
    python benchmarks/pixel_detail.py [--sets oscd levir] [--methods logreg unet linear+all]
        [--budget 30] [--seed 0] [--threads 2] [--out runs/pixel_detail]

Needs scikit-learn (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from densekit.data.datasets import Sample, TaskKind, WindowDataset, reference_grid
from densekit.data.windows import split_columns
from densekit.tasks import ChangeDetectionTask, SegmentationTask
from densekit.tasks.base import DenseTask
from densekit.tasks.metrics import ConfusionMetrics

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
IGNORE = 255
WINDOW = 128  # training windows (a multiple of 16 and 32)
TILE = 256  # test tiles
BATCH = 8
BACKBONE = {"backbone": "densekit_vitt16", "weights": "bundled"}
OPTIONS = ("input_upscale", "upsampler", "pixel_branch", "backbone_bands")


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
        "ce",
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
            target = target.flip([d + 1 for d in flips])
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


# -- methods -----------------------------------------------------------------------------------
def option_variants(upscale: float) -> dict[str, dict[str, Any]]:
    on = {"input_upscale": upscale, "upsampler": "guided", "pixel_branch": 16}
    return {
        "": {},
        "+upscale": {"input_upscale": upscale},
        "+guided": {"upsampler": "guided"},
        "+pixel": {"pixel_branch": 16},
        "+all": on,
    }


METHODS = [
    "logreg",
    "rf",
    "unet",
    *[f"{h}{v}" for h in ("linear", "dpt") for v in option_variants(2.0)],
]


def available_options() -> set[str]:
    return set(inspect.signature(DenseTask.__init__).parameters) & set(OPTIONS)


def scores_of(kind: str, positive: str, pred: torch.Tensor, target: torch.Tensor) -> float:
    """The set's metric from densekit's ConfusionMetrics."""
    m = ConfusionMetrics(2, IGNORE, ["other", positive])
    m.update(pred, target)
    return m.binary_scores(1)["f1"] if kind == "change" else m.scores()[f"iou_{positive}"]


def pixel_features(region: Region) -> np.ndarray:
    """``(H * W, F)``: all bands; for change [date 1, date 2, date 2 - date 1]."""
    xs = region.images
    if len(xs) == 2:
        xs = [xs[0], xs[1], xs[1] - xs[0]]
    x = np.concatenate(xs, axis=0)
    return x.reshape(x.shape[0], -1).T


def run_sklearn(method: str, spec: SetSpec, train: list[Region], test: list[Region], args) -> float:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x = np.concatenate([pixel_features(r) for r in train])
    y = np.concatenate([r.mask.ravel() for r in train])
    keep = y != IGNORE
    x, y = x[keep], y[keep]
    mean, std = np.nanmean(x, axis=0), np.maximum(np.nanstd(x, axis=0), 1e-6)
    n = min(args.pixels if method == "logreg" else args.rf_pixels, len(y))
    if n < len(y):
        x, _, y, _ = train_test_split(x, y, train_size=n, stratify=y, random_state=args.seed)
    x = np.nan_to_num((x - mean) / std)
    model: Any
    weight = "balanced" if "dice" in spec.loss else None  # where the trained runs use Dice
    if method == "logreg":
        model = LogisticRegression(max_iter=1000, class_weight=weight)
    else:
        model = RandomForestClassifier(
            n_estimators=100,
            min_samples_leaf=2,
            class_weight=weight,
            n_jobs=args.threads,
            random_state=args.seed,
        )
    model.fit(x, y)
    preds, targets = [], []
    for r in test:
        xt = np.nan_to_num((pixel_features(r) - mean) / std)
        preds.append(torch.from_numpy(model.predict(xt).astype(np.int64)))
        targets.append(torch.from_numpy(r.mask.ravel()))
    return scores_of(spec.kind, spec.positive, torch.cat(preds), torch.cat(targets))


def build_task(method: str, spec: SetSpec, train: list[Region]) -> tuple[DenseTask, list[int]]:
    """The task of a trained method and the set's bands it takes, in order."""
    n_bands = train[0].images[0].shape[0]
    common: dict[str, Any] = {
        "num_classes": 2,
        "loss": spec.loss,
        "lr": 1e-3,
        "warmup_steps": 10,
        "schedule": "constant",
    }
    if spec.kind == "segmentation":
        common["class_names"] = ["other", spec.positive]
    else:
        common["fusion"] = "absdiff"
    cls = ChangeDetectionTask if spec.kind == "change" else SegmentationTask
    if method == "unet":
        bands = list(range(n_bands))
        mean, std = band_stats(train, bands)
        return cls(
            head="unet", unet_encoder="resnet18", in_channels=n_bands, mean=mean, std=std, **common
        ), bands
    head, _, variant = method.partition("+")
    options = option_variants(spec.upscale)["+" + variant if variant else ""]
    model: dict[str, Any] = {
        **BACKBONE,
        "head": head,
        "layers": "last4" if head == "linear" else "dpt",
    }
    if head == "dpt":
        model["dpt_features"] = 64
    bands = list(spec.rgb)
    if options and n_bands > len(set(spec.rgb)):  # every band in; the backbone sees three
        bands = list(range(n_bands))
        options = {**options, "backbone_bands": list(spec.rgb)}
    mean, std = band_stats(train, bands)
    task = cls(in_channels=len(bands), mean=mean, std=std, **model, **options, **common)
    return task, bands


def run_trained(
    method: str, spec: SetSpec, train: list[Region], test: list[Region], args, folder: Path
) -> float:
    L.seed_everything(args.seed, workers=True, verbose=False)
    task, bands = build_task(method, spec, train)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        max_time=timedelta(seconds=args.budget),
        max_steps=1_000_000,  # stopped by max_time
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(folder),
    )
    train_loader = DataLoader(RandomWindows(train, bands), batch_size=BATCH)
    trainer.fit(task, train_dataloaders=train_loader)
    steps = trainer.global_step
    result = trainer.test(
        task, dataloaders=DataLoader(Tiles(test, bands), batch_size=1), verbose=False
    )
    print(f"    {steps} steps in {args.budget:.0f} s", flush=True)
    return float(result[0][f"test/{spec.metric}"])


# -- the table ---------------------------------------------------------------------------------
def table(
    results: dict[str, dict[str, dict[str, Any]]], sets: list[str], methods: list[str]
) -> str:
    """Markdown: methods x sets, ``metric (seconds)``; last row: best head - best baseline."""
    lines = [
        "| method | " + " | ".join(SETS[s].title for s in sets) + " |",
        "|---|" + "---|" * len(sets),
    ]
    for m in methods:
        cells = []
        for s in sets:
            r = results.get(s, {}).get(m)
            if r is None:
                cells.append("-")
            elif r.get("value") is None:
                cells.append(r.get("note", "n/a"))
            else:
                cells.append(f"{r['value']:.3f} ({r['seconds']:.0f} s)")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    gaps = []
    for s in sets:
        done = {m: r["value"] for m, r in results.get(s, {}).items() if r.get("value") is not None}
        heads = [v for m, v in done.items() if m.startswith(("linear", "dpt"))]
        bases = [v for m, v in done.items() if not m.startswith(("linear", "dpt"))]
        gaps.append(f"{max(heads) - max(bases):+.3f}" if heads and bases else "-")
    lines.append("| best head - best baseline | " + " | ".join(gaps) + " |")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=None, help="default: all")
    p.add_argument("--budget", type=float, default=30.0, help="training seconds per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch and scikit-learn threads")
    p.add_argument("--pixels", type=int, default=100_000, help="logreg training pixels")
    p.add_argument("--rf-pixels", type=int, default=30_000, help="random forest training pixels")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="folder for results.json, table.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    for message in ("validation_step", "isinstance.treespec", "module.s. in eval mode"):
        warnings.filterwarnings("ignore", f".*{message}.*")  # frozen backbone, no validation
    have = available_options()
    methods = args.methods or METHODS
    missing = sorted(set(OPTIONS) - have)
    if args.methods and missing and any("+" in m for m in args.methods):
        sys.exit(f"densekit's DenseTask lacks {missing}: the option variants cannot run")
    if missing:
        print(f"note: DenseTask lacks {missing}; option variants are reported as n/a", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.out / "runs" if args.out else Path(tmp)
        for name in args.sets:
            spec = SETS[name]
            tic = time.perf_counter()
            train, test = spec.load()
            print(f"[{name}] loaded in {time.perf_counter() - tic:.1f} s", flush=True)
            results[name] = {}
            for method in methods:
                if "+" in method and missing:
                    results[name][method] = {"value": None, "note": "n/a"}
                    continue
                print(f"[{name}] {method} ...", flush=True)
                tic = time.perf_counter()
                try:
                    if method in ("logreg", "rf"):
                        value = run_sklearn(method, spec, train, test, args)
                    else:
                        value = run_trained(method, spec, train, test, args, runs / name / method)
                except Exception:  # one failed run is reported; the others still run
                    traceback.print_exc()
                    print(f"[{name}] {method}: FAILED (traceback above)", flush=True)
                    results[name][method] = {"value": None, "note": "failed"}
                    failed = True
                    continue
                seconds = time.perf_counter() - tic
                results[name][method] = {"value": value, "seconds": seconds}
                print(f"[{name}] {method}: {spec.metric} {value:.3f} ({seconds:.0f} s)", flush=True)
                if args.out:
                    (args.out / "results.json").write_text(
                        json.dumps(record(args, results), indent=2)
                    )
    text = table(results, args.sets, methods)
    header = (
        f"backbone densekit_vitt16 (bundled weights); budget {args.budget:.0f} s per trained run; "
        f"seed {args.seed}; threads {torch.get_num_threads()}"
    )
    print(f"\n{header}\n\n{text}")
    if args.out:
        (args.out / "results.json").write_text(json.dumps(record(args, results), indent=2))
        (args.out / "table.md").write_text(f"{header}\n\n{text}\n")
    return 1 if failed else 0


def record(args: argparse.Namespace, results: dict) -> dict[str, Any]:
    return {
        "budget_s": args.budget,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "backbone": BACKBONE,
        "metrics": {s: SETS[s].metric for s in results},
        "results": results,
    }


if __name__ == "__main__":
    sys.exit(main())
