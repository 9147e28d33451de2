#!/usr/bin/env python3
"""``densekit tile --precision bf16`` against fp32 on the CPU; ratios measured in one run.

The two precisions alternate in one process for ``--rounds`` rounds at ``--threads`` torch
threads (default 1); each figure is its best round, in wall seconds and in process CPU seconds
(every thread, so the CPU ratio holds on a busy machine). The class maps of the last fp32 and
bf16 runs are compared pixel by pixel.

Usage (after ``densekit quickstart``, whose model and chip it reads by default):
    python benchmarks/bf16_cpu.py [--checkpoint densekit-quickstart/model.ckpt]
        [--input densekit/samples/sen1floods11/S2Hand.tif] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import rasterio
import torch

from densekit.inference import TileOptions, load_trained, tile_raster

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="densekit-quickstart/model.ckpt")
    p.add_argument("--input", default=str(ROOT / "densekit/samples/sen1floods11/S2Hand.tif"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tile", type=int, default=256)
    args = p.parse_args()
    if not Path(args.checkpoint).is_file():
        sys.exit(f"{args.checkpoint}: no such checkpoint (run `densekit quickstart` first)")
    torch.set_num_threads(args.threads)
    model = load_trained(args.checkpoint)
    best = {prec: [float("inf"), float("inf")] for prec in ("32", "bf16")}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for prec in best:
                opts = TileOptions(
                    tile=args.tile, overlap=32, batch_size=4, progress=False, precision=prec
                )
                wall, cpu = time.perf_counter(), time.process_time()
                tile_raster(model, args.input, Path(tmp) / f"{prec}.tif", options=opts)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                best[prec] = [min(best[prec][0], wall), min(best[prec][1], cpu)]
        with rasterio.open(Path(tmp) / "32.tif") as a, rasterio.open(Path(tmp) / "bf16.tif") as b:
            full, half = a.read(1), b.read(1)
    (w32, c32), (w16, c16) = best["32"], best["bf16"]
    print(
        f"{Path(args.input).name}, {args.threads} thread(s), best of {args.rounds} rounds: "
        f"fp32 {w32:.2f} s wall / {c32:.2f} s CPU, bf16 {w16:.2f} s / {c16:.2f} s"
    )
    print(
        f"bf16 / fp32 speed: {w32 / w16:.2f}x wall, {c32 / c16:.2f}x process CPU; classes "
        f"unchanged: {100 * (full == half).mean():.3f} % of {full.size} pixels"
    )


if __name__ == "__main__":
    main()
