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
constant learning rate, or with ``--decay cosine`` a cosine decay over the time budget (the step
count of a timed run is not known in advance). The test regions are evaluated once, in
non-overlapping tiles, with densekit's confusion metrics (``ChangeMetrics``: the change class's F1,
the positive class's IoU); the per-pixel baselines are scored with the same class. Each cell shows
the metric and the wall time of that run (fit + test). The last row is the best densekit head minus
the best baseline.

Usage:
    python benchmarks/pixel_detail.py [--sets oscd levir] [--methods logreg unet linear+all]
        [--budget 30] [--seeds 0 1 2] [--threads 2] [--decay cosine] [--out runs/pixel_detail]
    python benchmarks/pixel_detail.py --merge A/results.json B/results.json [--out DIR]

Needs scikit-learn (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
import traceback
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from densekit.tasks import ChangeDetectionTask, SegmentationTask
from densekit.tasks.base import DenseTask
from densekit.tasks.metrics import ChangeMetrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pixel_detail_data import (
    IGNORE,
    SETS,
    RandomWindows,
    Region,
    SetSpec,
    Tiles,
    band_stats,
)

BATCH = 8
BACKBONE = {"backbone": "densekit_vitt16", "weights": "bundled"}


class TimeDecay(L.Callback):
    """A cosine decay of every learning rate over the wall-time budget (the step count of a
    timed run is not known in advance, so the task's own step-based schedules cannot end on
    time). Set before each optimizer step; the task's warm-up factor is kept."""

    def __init__(self, budget: float, warmup: int) -> None:
        self.budget, self.warmup, self.start = budget, warmup, 0.0

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, module, batch, batch_idx: int) -> None:
        progress = min((time.perf_counter() - self.start) / self.budget, 1.0)
        factor = 0.5 * (1 + math.cos(math.pi * progress))
        factor *= min(1.0, (trainer.global_step + 1) / max(self.warmup, 1))
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor


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


def scores_of(kind: str, positive: str, pred: torch.Tensor, target: torch.Tensor) -> float:
    """The set's metric: the change class's F1 or the positive class's IoU, from densekit's
    confusion metrics (``ChangeMetrics`` gives both)."""
    m = ChangeMetrics(2, IGNORE, ["other", positive])
    m.update(pred, target)
    return m.scores()["f1"] if kind == "change" else m.scores()[f"iou_{positive}"]


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


def build_task(
    method: str, spec: SetSpec, train: list[Region], lr: float = 1e-3, loss: str | None = None
) -> tuple[DenseTask, list[int]]:
    """The task of a trained method and the set's bands it takes, in order."""
    n_bands = train[0].images[0].shape[0]
    common: dict[str, Any] = {
        "num_classes": 2,
        "loss": loss or spec.loss,
        "lr": lr,
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
) -> tuple[float, int]:
    L.seed_everything(args.seed, workers=True, verbose=False)
    lr = args.unet_lr if method == "unet" else args.head_lr
    loss = None if args.loss is None else ("bce+dice" if spec.kind == "change" else args.loss)
    task, bands = build_task(method, spec, train, lr, loss)
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
        callbacks=[TimeDecay(args.budget, 10)] if args.decay == "cosine" else [],
    )
    train_loader = DataLoader(RandomWindows(train, bands), batch_size=BATCH)
    trainer.fit(task, train_dataloaders=train_loader)
    steps = trainer.global_step
    result = trainer.test(
        task, dataloaders=DataLoader(Tiles(test, bands), batch_size=1), verbose=False
    )
    print(f"    {steps} steps in {args.budget:.0f} s", flush=True)
    return float(result[0][f"test/{spec.metric}"]), steps


# -- the table ---------------------------------------------------------------------------------
def table(
    results: dict[str, dict[str, dict[str, Any]]], sets: list[str], methods: list[str]
) -> str:
    """Markdown: methods x sets, ``metric (seconds[, training steps])``; last row: the best
    head minus the best baseline."""
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
                steps = f", {r['steps']} steps" if r.get("steps") is not None else ""
                spread = f" ± {r['std']:.3f}" if r.get("std") is not None else ""
                cells.append(f"{r['value']:.3f}{spread} ({r['seconds']:.0f} s{steps})")
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
    p.add_argument("--head-lr", type=float, default=1e-3, help="learning rate of the heads")
    p.add_argument(
        "--decay",
        choices=["constant", "cosine"],
        default="constant",
        help="learning rate after the warm-up: constant, or a cosine over the time budget",
    )
    p.add_argument("--unet-lr", type=float, default=1e-3, help="learning rate of the U-Net")
    p.add_argument(
        "--loss", default=None, help="segmentation loss of every trained run (default: per set)"
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="one run per seed; cells: mean ± std"
    )
    p.add_argument("--threads", type=int, default=None, help="torch and scikit-learn threads")
    p.add_argument("--pixels", type=int, default=100_000, help="logreg training pixels")
    p.add_argument("--rf-pixels", type=int, default=30_000, help="random forest training pixels")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="folder for results.json, table.md")
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        metavar="RESULTS_JSON",
        help="run nothing: one table from the results.json of earlier runs of one protocol",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    for message in ("validation_step", "isinstance.treespec", "module.s. in eval mode"):
        warnings.filterwarnings("ignore", f".*{message}.*")  # frozen backbone, no validation
    methods = args.methods or METHODS
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
                print(f"[{name}] {method} ...", flush=True)
                runs_of: list[dict[str, Any]] = []
                for seed in args.seeds:
                    args.seed = seed
                    tic = time.perf_counter()
                    steps = None
                    try:
                        if method in ("logreg", "rf"):
                            value = run_sklearn(method, spec, train, test, args)
                        else:
                            folder = runs / name / method / f"seed{seed}"
                            value, steps = run_trained(method, spec, train, test, args, folder)
                    except Exception:  # one failed run is reported; the others still run
                        traceback.print_exc()
                        print(f"[{name}] {method}: FAILED (traceback above)", flush=True)
                        failed = True
                        break
                    seconds = time.perf_counter() - tic
                    runs_of.append({"value": value, "seconds": seconds, "steps": steps})
                    print(
                        f"[{name}] {method} seed {seed}: {spec.metric} {value:.3f} "
                        f"({seconds:.0f} s)",
                        flush=True,
                    )
                if len(runs_of) < len(args.seeds):
                    results[name][method] = {"value": None, "note": "failed"}
                    continue
                values = np.array([r["value"] for r in runs_of])
                steps_of = [r["steps"] for r in runs_of if r["steps"] is not None]
                results[name][method] = {
                    "value": float(values.mean()),
                    "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                    "values": values.tolist(),
                    "seconds": float(np.mean([r["seconds"] for r in runs_of])),
                    "steps": round(float(np.mean(steps_of))) if steps_of else None,
                }
                if args.out:
                    (args.out / "results.json").write_text(
                        json.dumps(record(args, results), indent=2)
                    )
    rec = record(args, results)
    text = table(results, args.sets, methods)
    print(f"\n{header_of(rec)}\n\n{text}")
    if args.out:
        (args.out / "results.json").write_text(json.dumps(rec, indent=2))
        (args.out / "table.md").write_text(f"{header_of(rec)}\n\n{text}\n")
    return 1 if failed else 0


PROTOCOL = ("budget_s", "seeds", "threads", "backbone", "head_lr", "unet_lr", "loss", "decay")


def record(args: argparse.Namespace, results: dict) -> dict[str, Any]:
    return {
        "budget_s": args.budget,
        "seeds": args.seeds,
        "threads": torch.get_num_threads(),
        "backbone": BACKBONE,
        "head_lr": args.head_lr,
        "unet_lr": args.unet_lr,
        "loss": args.loss,
        "decay": args.decay,
        "metrics": {s: SETS[s].metric for s in results},
        "results": results,
    }


def header_of(rec: dict[str, Any]) -> str:
    keys = ("head_lr", "unet_lr", "loss", "decay")
    settings = "; ".join(f"{k} {rec[k]}" for k in keys if k in rec)
    return (
        f"backbone densekit_vitt16 (bundled weights); budget {rec['budget_s']:.0f} s per trained "
        f"run; seeds {', '.join(map(str, rec['seeds']))}; threads {rec['threads']}"
        + (f"; {settings}" if settings else "")
    )


def merge(paths: list[Path], out: Path | None) -> int:
    """One table from the ``results.json`` of runs of one protocol (say the methods split over
    two processes, one per core)."""
    records = []
    for path in paths:
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"--merge: cannot read {path}: {e}") from None
    for key in PROTOCOL:
        seen = {json.dumps(r.get(key)) for r in records}
        if len(seen) > 1:
            raise SystemExit(
                f"--merge: the files differ in {key!r} ({' vs '.join(sorted(seen))}); "
                "one table needs one protocol"
            )
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for path, rec in zip(paths, records, strict=True):
        for name, cells in rec["results"].items():
            for method, cell in cells.items():
                if method in results.get(name, {}):
                    raise SystemExit(
                        f"--merge: {name} / {method} is in more than one file ({path})"
                    )
                results.setdefault(name, {})[method] = cell
    sets = [s for s in SETS if s in results]
    methods = [m for m in METHODS if any(m in results[s] for s in sets)]
    rec = {**records[0], "metrics": {s: SETS[s].metric for s in sets}, "results": results}
    text = table(results, sets, methods)
    print(f"{header_of(rec)}\n\n{text}")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(rec, indent=2))
        (out / "table.md").write_text(f"{header_of(rec)}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
