#!/usr/bin/env python3
"""Backbone throughput: images/s, achieved GFLOP/s and the ratio to a dense matmul, one run.

For a registry backbone at a given input size (default: DINOv2 ViT-S/14, random weights, 518 x 518,
fp32, CPU), it measures in the same process:

* the FLOPs of one forward, counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
  convolutions and attention; the CPU attention kernel gets the same formula as the CUDA ones);
* images/s of densekit's ``Backbone.forward`` (padding, inference mode, the configured layers),
  and of timm's own ``forward_features`` on the same weights (the wrapper's overhead), timed in
  alternation (:mod:`alternate`), wall and process CPU seconds;
* GFLOP/s of a dense fp32 (or --dtype) square matmul on the same device: the reference the
  achieved GFLOP/s is divided by.

Usage: python benchmarks/backbone_throughput.py [--backbone dinov2_vits14] [--size 518]
       [--batch 4] [--device cpu|cuda] [--bf16] [--iters 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings

import torch
from alternate import alternate
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from densekit import load_backbone


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, iters: int, warmup: int = 2) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode has formulas for the CUDA attention kernels only; the CPU one does the
    same two matmuls (q k^T and attn v)."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn) -> int:
    mapping = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _cpu_sdpa_flops
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter, torch.inference_mode():
        fn()
    return counter.get_total_flops()


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int, iters: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    with torch.inference_mode():
        sec = timed(lambda: a @ b, device, iters)
    return 2 * n**3 / sec / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backbone", default="dinov2_vits14")
    ap.add_argument("--size", type=int, default=518)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--layers", default="last4")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="autocast the forward to bfloat16")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--matmul", type=int, default=2048, help="side of the reference matmul")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (CPU seconds at one)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning: intended here
        bb = load_backbone(
            args.backbone,
            "random",
            layers=args.layers,
            autocast_dtype=torch.bfloat16 if args.bf16 else None,
            device=device,
        )
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)

    flops = count_flops(lambda: bb(x)) / args.batch

    def ours() -> None:
        bb(x)

    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    )

    def timm_only() -> None:
        with torch.inference_mode(), autocast:
            bb.model.forward_features(x)

    times = alternate(
        {"densekit": ours, "timm": timm_only}, args.iters, warmup=2, sync=lambda: sync(device)
    )
    sec_ours, sec_timm = times["densekit"].wall, times["timm"].wall
    ref_dtype = torch.bfloat16 if args.bf16 else torch.float32
    peak = matmul_gflops(device, ref_dtype, args.matmul, args.iters)

    ips = args.batch / sec_ours
    achieved = flops * ips / 1e9
    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(
        f"backbone: {bb.name} (random weights), input {args.batch}x3x{args.size}x{args.size}, "
        f"layers {list(bb.layers)}, {'bf16 autocast' if args.bf16 else 'fp32'}"
    )
    print(f"forward FLOPs per image: {flops / 1e9:.1f} GFLOP")
    print(f"densekit forward: {ips:.2f} images/s, {achieved:.1f} GFLOP/s")
    print(f"timm forward_features: {args.batch / sec_timm:.2f} images/s")
    print(f"dense {ref_dtype} matmul {args.matmul}^3: {peak:.1f} GFLOP/s")
    print(f"ratio achieved / matmul: {achieved / peak:.2f}")
    print(
        f"ratio densekit / timm forward time: {sec_ours / sec_timm:.2f} wall, "
        f"{times['densekit'].cpu / times['timm'].cpu:.2f} process CPU (alternated, median of "
        f"{args.iters})"
    )


if __name__ == "__main__":
    main()
