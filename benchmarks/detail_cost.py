#!/usr/bin/env python3
"""The cost of the pixel-detail options, measured in one run against the plain model.

For one tile batch (default 8 x 13 bands x 224 x 224, the bundled ``densekit_vitt16`` seeing 3 of
the bands, a linear head on the last four layers, 2 classes) it times the whole inference forward
of the task with each option on (median of ``--iters`` calls after a warm-up, the options called
in alternation, :mod:`alternate`) and prints milliseconds per tile (wall, and process CPU),
megapixels/s, the ratio to the plain model, the FLOPs counted by
``torch.utils.flop_counter`` (the guided upsampler's softmax and gathers are not FLOP-counted ops;
its time is the honest figure) and the trainable parameters of each part. Training cost differs
(backward through the detail modules, none through the frozen backbone); the wall time of
training runs is in ``benchmarks/pixel_detail.py``.

Usage: python benchmarks/detail_cost.py [--tile 224] [--batch 8] [--device cpu|cuda] [--bf16]
       [--iters 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import warnings

import torch
from alternate import alternate
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tile", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--bands", type=int, default=13)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (CPU seconds at one)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = torch.randn(args.batch, args.bands, args.tile, args.tile, device=device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    )
    print(
        f"{args.batch} tiles of {args.bands} x {args.tile} x {args.tile}, densekit_vitt16 "
        f"(bundled) on 3 bands, linear head on last4, {device}{' bf16' if args.bf16 else ''}"
    )
    print(
        f"{'option':<18} {'ms/tile':>8} {'CPU ms':>7} {'Mpx/s':>7} {'x plain':>8} "
        f"{'x CPU':>6} {'GFLOP/tile':>11}  params"
    )
    tasks = {name: build(options, args.bands, device) for name, options in OPTIONS.items()}

    def runner(task: SegmentationTask):
        def run() -> None:
            with torch.inference_mode(), autocast:
                task(x)

        return run

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    runs = {name: runner(task) for name, task in tasks.items()}
    times = alternate(runs, args.iters, sync=sync)
    base = times["plain"]
    for name, task in tasks.items():
        counter = FlopCounterMode(display=False)
        with counter:
            runs[name]()
        gflop = counter.get_total_flops() / 1e9 / args.batch
        t = times[name]
        sizes = ", ".join(f"{k} {v:,}" for k, v in task.model.parameter_counts().items())
        mpx = args.batch * args.tile**2 / t.wall / 1e6
        print(
            f"{name:<18} {1000 * t.wall / args.batch:8.1f} {1000 * t.cpu / args.batch:7.1f} "
            f"{mpx:7.3f} {t.wall / base.wall:8.2f} {t.cpu / base.cpu:6.2f} {gflop:11.2f}  {sizes}"
        )


if __name__ == "__main__":
    main()
