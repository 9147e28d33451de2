#!/usr/bin/env python3
"""The cost of the pixel-detail options, measured in one run against the plain model.

For one tile batch (default 8 x 13 bands x 224 x 224, the bundled ``densekit_vitt16`` seeing 3 of
the bands, a linear head on the last four layers, 2 classes) it times the whole inference forward
of the task with each option on (median of ``--iters`` calls, after a warm-up) and prints
milliseconds per tile, megapixels/s, the ratio to the plain model, the FLOPs counted by
``torch.utils.flop_counter`` (the guided upsampler's softmax and gathers are not FLOP-counted ops;
its time is the honest figure) and the trainable parameters of each part. Training cost differs
(backward through the detail modules, none through the frozen backbone); the wall time of
training runs is in ``benchmarks/pixel_detail.py``.

Usage: python benchmarks/detail_cost.py [--tile 224] [--batch 8] [--device cpu|cuda] [--bf16]
       [--iters 5]
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from densekit.tasks import SegmentationTask

OPTIONS: dict[str, dict] = {
    "plain": {},
    "input_upscale 2": {"input_upscale": 2.0},
    "upsampler guided": {"upsampler": "guided"},
    "pixel_branch 16": {"pixel_branch": 16},
    "all three": {"input_upscale": 2.0, "upsampler": "guided", "pixel_branch": 16},
}


def build(options: dict, bands: int, device: torch.device) -> SegmentationTask:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = SegmentationTask(
            num_classes=2,
            backbone="densekit_vitt16",
            weights="bundled",
            layers="last4",
            in_channels=bands,
            backbone_bands=[3, 2, 1],
            mean=[0.0] * bands,
            std=[1.0] * bands,
            **options,
        )
    return task.eval().to(device)


def timed(fn, device: torch.device, iters: int) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tile", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--bands", type=int, default=13)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    x = torch.randn(args.batch, args.bands, args.tile, args.tile, device=device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    )
    print(
        f"{args.batch} tiles of {args.bands} x {args.tile} x {args.tile}, densekit_vitt16 "
        f"(bundled) on 3 bands, linear head on last4, {device}{' bf16' if args.bf16 else ''}"
    )
    print(f"{'option':<18} {'ms/tile':>8} {'Mpx/s':>7} {'x plain':>8} {'GFLOP/tile':>11}  params")
    base = None
    for name, options in OPTIONS.items():
        task = build(options, args.bands, device)

        def run(task: SegmentationTask = task) -> None:
            with torch.inference_mode(), autocast:
                task(x)

        seconds = timed(run, device, args.iters)
        counter = FlopCounterMode(display=False)
        with counter:
            run()
        gflop = counter.get_total_flops() / 1e9 / args.batch
        base = base or seconds
        sizes = ", ".join(f"{k} {v:,}" for k, v in task.model.parameter_counts().items())
        mpx = args.batch * args.tile**2 / seconds / 1e6
        print(
            f"{name:<18} {1000 * seconds / args.batch:8.1f} {mpx:7.3f} {seconds / base:8.2f} "
            f"{gflop:11.2f}  {sizes}"
        )


if __name__ == "__main__":
    main()
