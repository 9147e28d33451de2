#!/usr/bin/env python3
"""Feature cache: epoch time of a linear head uncached / cached, and equal results, one run.

On the SpaceNet Atlanta tile from ../shared/data (grid windows, no augmentation; left 60 %
train, next 20 % validation), it trains the same linear head twice with the same seed: once
computing the frozen backbone's features every epoch, once with ``feature_cache`` (a fresh
folder: epoch 1 fills it, later epochs read it). It prints the mean time of epochs 2.. of each
(training and validation, wall and process CPU seconds), their ratios (goal >= 10), and whether
the two runs end with the same head weights and validation metrics.

Usage: python benchmarks/feature_cache.py [--backbone dinov2_vits14] [--weights random]
       [--epochs 4] [--window 224] [--threads 1]

The two runs are whole trainings, so they cannot alternate call by call as the other
benchmarks' contenders do (:mod:`alternate`); the CPU-seconds ratio is the load-proof figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from densekit.data import SegmentationDataModule
from densekit.tasks import SegmentationTask

ROOT = Path(__file__).resolve().parent.parent
TILE = ROOT.parent / "shared/data/spacenet-solaris-samples/buildings_atlanta"


class EpochTimer(L.Callback):
    """Wall and process CPU seconds of each epoch (training and validation)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.tic, self.cpu_tic = time.perf_counter(), time.process_time()

    def on_validation_epoch_end(self, trainer, module) -> None:
        if not trainer.sanity_checking and hasattr(self, "tic"):
            self.times.append(time.perf_counter() - self.tic)
            self.cpu.append(time.process_time() - self.cpu_tic)


def run(args, cache: str | None) -> tuple[EpochTimer, SegmentationTask, dict]:
    L.seed_everything(0)
    data = SegmentationDataModule(
        images=str(TILE / "sample_geotiff.tif"),
        labels=str(TILE / "sample_fp_mask_from_geojson.tif"),
        bands=[1, 1, 1],
        label_map={0: 0, 255: 1},
        split=[0.6, 0.2, 0.2],
        window=args.window,
        batch_size=8,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = SegmentationTask(
            num_classes=2,
            backbone=args.backbone,
            weights=args.weights,
            layers="last4",
            mean=[457.0] * 3,
            std=[263.2] * 3,
            feature_cache=cache,
        )
        timer = EpochTimer()
        trainer = L.Trainer(
            max_epochs=args.epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
            num_sanity_val_steps=0,
        )
        trainer.fit(task, data)
    return timer, task, dict(trainer.callback_metrics)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="dinov2_vits14")
    p.add_argument("--weights", default="random")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--window", type=int, default=224)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (CPU seconds at one)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not TILE.is_dir():
        sys.exit(f"needs {TILE}")
    print(
        f"{args.backbone} ({args.weights} weights), linear head on the last four blocks, "
        f"SpaceNet Atlanta, {args.window}-px grid windows, {args.epochs} epochs, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    plain_timer, plain, plain_metrics = run(args, None)
    with tempfile.TemporaryDirectory() as tmp:
        cached_timer, cached, cached_metrics = run(args, tmp)
        entries = len(list(Path(tmp).glob("*/*.pt")))
        size = sum(p.stat().st_size for p in Path(tmp).glob("*/*.pt")) / 1e6
    uncached = statistics.mean(plain_timer.times[1:])
    hit = statistics.mean(cached_timer.times[1:])
    cpu_ratio = statistics.mean(plain_timer.cpu[1:]) / statistics.mean(cached_timer.cpu[1:])
    same_head = all(
        torch.equal(a, b)
        for a, b in zip(
            plain.model.head.state_dict().values(),
            cached.model.head.state_dict().values(),
            strict=True,
        )
    )
    same_metrics = plain_metrics.keys() == cached_metrics.keys() and all(
        torch.equal(plain_metrics[k], cached_metrics[k]) for k in plain_metrics
    )
    print(
        f"epoch 1 (fills the cache): {cached_timer.times[0]:.2f} s; uncached epoch 1: "
        f"{plain_timer.times[0]:.2f} s",
        flush=True,
    )
    print(
        f"epochs 2..{args.epochs}: uncached {uncached:.2f} s, cached {hit:.3f} s per epoch: "
        f"ratio {uncached / hit:.1f} wall, {cpu_ratio:.1f} process CPU (goal >= 10); cache "
        f"{entries} entries, {size:.1f} MB"
    )
    print(
        f"same head weights: {same_head}; same validation metrics: {same_metrics} "
        f"(val/miou {float(plain_metrics['val/miou']):.4f} vs "
        f"{float(cached_metrics['val/miou']):.4f})"
    )


if __name__ == "__main__":
    main()
