#!/usr/bin/env python3
"""Tiled inference benchmark on the real Blue Marble GeoTIFF; every ratio measured in one run.

It prints (and writes as JSON with --out):

1. throughput: ``densekit.inference.tile_raster`` end to end (read, model, blend, write the COG)
   in megapixels/s, divided by the same model's forward on the same tiles, batched the same,
   already in memory (goal >= 0.9). Every contender of parts 1 and 4 that runs in this process
   (tile, forward, MONAI twice) runs once per round, in turn, for ``--repeats`` rounds, and
   each figure is its best round, both in wall seconds and in process CPU seconds (every
   thread; ``--threads 1`` by default, so CPU seconds compare the work done whatever else the
   machine runs, while wall seconds under load can give impossible ratios);
2. memory: peak RSS of a ``tile`` run on a 20000 x 20000 VRT that repeats the Blue Marble,
   divided by that on a 2000 x 2000 crop, each in its own process (goal <= 1.2);
3. exactness: a model that is exactly translation-equivariant (1x1 convolutions on pixels)
   tiled and untiled: max abs difference, in units of float32 eps times the largest value;
4. other tools with the same model on the same raster: MONAI ``sliding_window_inference`` and
   TerraTorch ``tiled_inference`` (when ``--terratorch-python`` names an environment with it;
   it is not a densekit dependency), at densekit's tile and overlap and at each tool's
   defaults. They hold the whole raster and output in memory; their time includes reading the
   raster and the class map (no file written), densekit's includes writing the COG. TerraTorch
   runs in its own environment (a separate process after the rounds: wall time only, best of 2
   after one untimed warm-up call), so its ratio is the one to distrust on a busy machine. Importing
   TerraTorch lowers torch's float32 matmul precision to "medium" for the whole process; its
   runs are reset to "highest", densekit's precision, so the numerics are the same.

The throughput model is a frozen ``densekit_vitt16`` (ViT-Tiny/16, random weights) with a
linear head; the memory runs use a 2-block, 32-wide DINOv2-layout ViT so the 400-megapixel run
takes minutes on 2 cores.

Usage: python benchmarks/tiling.py [--tile 224] [--overlap 32] [--batch 8] [--device cpu]
       [--bf16] [--threads 1] [--repeats 3] [--raster PATH] [--skip-memory] [--only-throughput]
       [--terratorch-python PATH] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import torch

from densekit.backbones import load_backbone
from densekit.backbones.export import official_state_dict, save_official
from densekit.inference import TileOptions, Trained, make_plan, tile_raster
from densekit.models import InputSpec, OutputSpec
from densekit.tasks import SegmentationTask

ROOT = Path(__file__).resolve().parent.parent
BLUE_MARBLE = (
    ROOT.parent / "shared/data/bluemarble-large-geotiff/bluemarble_200412_5400x2700_epsg4326.tif"
)
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def build_model(kind: str, folder: Path, device: str) -> Trained:
    """A segmentation task (2 classes, linear head) on a frozen random backbone, seeded."""
    torch.manual_seed(0)
    name, overrides = ("densekit_vitt16", {}) if kind == "vitt" else ("dinov2_vits14", TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = load_backbone(name, "random", **overrides)
    weights = save_official(official_state_dict(b.arch, b.model), folder / f"{kind}.pth")
    task = SegmentationTask(
        num_classes=2,
        backbone=name,
        weights=str(weights),
        backbone_overrides=overrides,
        scale=1 / 255,
    )
    return Trained.of(task.model).to(device)


def repeat_vrt(src: Path, width: int, height: int, dest: Path) -> None:
    """A VRT of ``width x height`` that repeats ``src`` (keeps its bands and georeference)."""
    with rasterio.open(src) as s:
        w, h, count = s.width, s.height, s.count
        gt = s.transform.to_gdal()
        wkt = s.crs.to_wkt().replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    lines = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f"<SRS>{wkt}</SRS>",
        "<GeoTransform>" + ", ".join(repr(v) for v in gt) + "</GeoTransform>",
    ]
    for b in range(1, count + 1):
        lines.append(f'<VRTRasterBand dataType="Byte" band="{b}">')
        for y in range(0, height, h):
            for x in range(0, width, w):
                cw, ch = min(w, width - x), min(h, height - y)
                lines += [
                    "<SimpleSource>",
                    f'<SourceFilename relativeToVRT="0">{src}</SourceFilename>',
                    f"<SourceBand>{b}</SourceBand>",
                    f'<SrcRect xOff="0" yOff="0" xSize="{cw}" ySize="{ch}"/>',
                    f'<DstRect xOff="{x}" yOff="{y}" xSize="{cw}" ySize="{ch}"/>',
                    "</SimpleSource>",
                ]
        lines.append("</VRTRasterBand>")
    lines.append("</VRTDataset>")
    dest.write_text("\n".join(lines))


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds and process CPU seconds (every thread) of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def forward_in_memory(
    model: Trained, src: Path, opts: TileOptions
) -> tuple[tuple[float, float], int]:
    """Wall and CPU seconds of the model alone on the tiles ``tile_raster`` would make, batched
    the same (the tiles already in memory), and the number of tiles."""
    with rasterio.open(src) as s:
        grid_w, grid_h = s.width, s.height
        data = s.read().astype(np.float32)
    from densekit.data.grids import grid_of

    plan = make_plan(grid_of(str(src)), opts, model.patch, str(src))
    t = plan.tile
    padded = np.zeros((data.shape[0], plan.rows[-1] + t, plan.cols[-1] + t), np.float32)
    padded[:, :grid_h, :grid_w] = data
    batches = []
    for r in plan.rows:
        for i in range(0, len(plan.cols), opts.batch_size):
            cols = plan.cols[i : i + opts.batch_size]
            batches.append(
                torch.from_numpy(np.stack([padded[:, r : r + t, c : c + t] for c in cols]))
            )
    model(batches[0], precision=opts.precision)  # warm-up

    def run() -> None:
        for x in batches:  # the model and its activation, as tile_raster runs them
            model.output.activate(model(x, precision=opts.precision)).cpu()

    return timed(run), sum(len(b) for b in batches)


def equivariance(folder: Path) -> float:
    """Max |tiled - untiled| / (eps * max|untiled|) for 1x1 convolutions on pixels."""
    from torch import nn

    class PixelNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Conv2d(3, 16, 1), nn.GELU(), nn.Conv2d(16, 1, 1))

        def forward(self, x):
            return self.net(torch.nan_to_num(x / 255, nan=0.0))

    crop = folder / "crop1024.tif"
    with rasterio.open(BLUE_MARBLE) as s:
        win = rasterio.windows.Window(2200, 600, 1024, 1024)
        profile = dict(s.profile, width=1024, height=1024, transform=s.window_transform(win))
        data = s.read(window=win)
    with rasterio.open(crop, "w", **profile) as d:
        d.write(data)
    model = Trained(
        model=PixelNet(),
        output=OutputSpec("depth", 1, "none", description="depth"),
        inputs=InputSpec(3, 1, None, (127.5,) * 3, (64.0,) * 3, 1.0),
    )
    tile_raster(
        model, crop, folder / "eq.tif", options=TileOptions(tile=224, overlap=32, progress=False)
    )
    with torch.no_grad():
        full = model.model(torch.from_numpy(data.astype(np.float32))[None])[0, 0].numpy()
    with rasterio.open(folder / "eq.tif") as o:
        tiled = o.read(1)
    return float(np.abs(tiled - full).max() / (np.finfo(np.float32).eps * np.abs(full).max()))


def monai_run(
    model: Trained, src: Path, tile: int, overlap: float, batch: int, mode: str
) -> tuple[float, float]:
    """Wall and CPU seconds of MONAI's sliding window over the raster (reading it included)."""
    from monai.inferers import sliding_window_inference

    def run() -> None:
        with rasterio.open(src) as s:
            x = torch.from_numpy(s.read().astype(np.float32))[None]
        out = sliding_window_inference(
            x,
            roi_size=(tile, tile),
            sw_batch_size=batch,
            predictor=lambda t: model.output.activate(model(t)),
            overlap=overlap,
            mode=mode,
        )
        out.argmax(1).to(torch.uint8)

    return timed(run)


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def memory_child(size: int, vrt: str, out: str, tile: int, overlap: int) -> None:
    """Run in a child process: tile ``vrt`` with the small model; print its peak RSS (MiB).

    The peak is /proc's VmHWM of this process image, not ``ru_maxrss``: Linux carries
    ``ru_maxrss`` over from the forking parent, whose memory has nothing to do with this run.
    """
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model("tiny", Path(tmp), "cpu")
        before = _status_mib("VmRSS")
        tic = time.perf_counter()
        opts = TileOptions(tile=tile, overlap=overlap, batch_size=4, progress=False)
        tile_raster(model, vrt, out, options=opts)
        seconds = time.perf_counter() - tic
    peak = _status_mib("VmHWM")
    print(
        json.dumps(
            {"size": size, "peak_rss_mib": peak, "rss_before_tile_mib": before, "seconds": seconds}
        )
    )


def measure_memory(folder: Path, tile: int, overlap: int) -> dict:
    results = {}
    for size in (2000, 20000):
        vrt = folder / f"bm_{size}.vrt"
        repeat_vrt(BLUE_MARBLE, size, size, vrt)
        cmd = [
            sys.executable,
            __file__,
            "--_memory-child",
            str(size),
            str(vrt),
            str(folder / f"mem_{size}.tif"),
            str(tile),
            str(overlap),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[size] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[size]
        print(
            f"  {size} x {size}: peak RSS {r['peak_rss_mib']:.0f} MiB (model built: "
            f"{r['rss_before_tile_mib']:.0f} MiB), {r['seconds']:.1f} s",
            flush=True,
        )
    ratio = results[20000]["peak_rss_mib"] / results[2000]["peak_rss_mib"]
    growth = [results[n]["peak_rss_mib"] - results[n]["rss_before_tile_mib"] for n in (2000, 20000)]
    return {"runs": results, "ratio_20000_over_2000": ratio, "growth_mib": growth}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tile", type=int, default=224)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--repeats", type=int, default=3, help="rounds of parts 1 and 4 (best of each)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: CPU seconds compare)"
    )
    p.add_argument("--raster", default=str(BLUE_MARBLE), help="the raster (default Blue Marble)")
    p.add_argument("--only-memory", action="store_true")
    p.add_argument("--only-throughput", action="store_true", help="part 1 only")
    p.add_argument("--memory-tile", type=int, default=504)
    p.add_argument("--terratorch-python", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--_memory-child", nargs=5, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._memory_child:
        size, vrt, out, tile, overlap = args._memory_child
        memory_child(int(size), vrt, out, int(tile), int(overlap))
        return
    raster = Path(args.raster)
    if not raster.is_file():
        sys.exit(f"needs {raster} (the Blue Marble: ../shared/data beside the repository)")
    torch.set_num_threads(args.threads)
    results: dict = {
        "device": args.device,
        "bf16": args.bf16,
        "torch_threads": torch.get_num_threads(),
        "raster": str(raster),
    }
    if args.only_memory:
        with tempfile.TemporaryDirectory() as tmp:
            results["memory"] = measure_memory(Path(tmp), args.memory_tile, args.overlap)
        print(f"2. peak RSS 20000^2 / 2000^2 = {results['memory']['ratio_20000_over_2000']:.3f}")
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = build_model("vitt", folder, args.device)
        opts = TileOptions(
            tile=args.tile,
            overlap=args.overlap,
            batch_size=args.batch,
            progress=False,
            device=args.device,
            precision="bf16" if args.bf16 else "32",
        )
        with rasterio.open(raster) as s:
            mpx = s.width * s.height / 1e6
        print(
            f"{raster.name} {mpx:.1f} Mpx, densekit_vitt16 + linear head, tile {args.tile}, "
            f"overlap {args.overlap}, batch {args.batch}, {args.device}, "
            f"{torch.get_num_threads()} torch thread(s)",
            flush=True,
        )
        frac = args.overlap / args.tile
        monai = {
            "monai_same": dict(tile=args.tile, overlap=frac, batch=args.batch, mode="gaussian"),
            "monai_defaults": dict(tile=args.tile, overlap=0.25, batch=1, mode="constant"),
        }
        contenders: dict[str, Callable[[], tuple[float, float]]] = {
            "tile": lambda: timed(
                lambda: tile_raster(model, raster, folder / "bm.tif", options=opts)
            ),
            "forward": lambda: forward_in_memory(model, raster, opts)[0],
            **{k: (lambda kw=kw: monai_run(model, raster, **kw)) for k, kw in monai.items()},
        }
        if args.only_throughput:
            contenders = {k: v for k, v in contenders.items() if k in ("tile", "forward")}
        best = {k: (float("inf"), float("inf")) for k in contenders}
        for _ in range(args.repeats):  # rounds alternating the contenders (machine noise)
            for name, run in contenders.items():
                wall, cpu = run()
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
        tiles = forward_in_memory(model, raster, opts)[1]
        (e2e, e2e_cpu), (fwd, fwd_cpu) = best["tile"], best["forward"]
        results["throughput"] = {
            "tiles": tiles,
            "tile_mpx_per_s": mpx / e2e,
            "forward_mpx_per_s": mpx / fwd,
            "tile_s": e2e,
            "forward_s": fwd,
            "tile_cpu_s": e2e_cpu,
            "forward_cpu_s": fwd_cpu,
            "ratio": fwd / e2e,
            "ratio_cpu": fwd_cpu / e2e_cpu,
        }
        print(
            f"1. tile {mpx / e2e:.3f} Mpx/s end to end, forward alone {mpx / fwd:.3f} Mpx/s "
            f"on the same {tiles} tiles: ratio {fwd / e2e:.3f} wall, {fwd_cpu / e2e_cpu:.3f} "
            "process CPU (goal >= 0.9)",
            flush=True,
        )
        if args.only_throughput:
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=1))
            return
        results["equivariance_eps_units"] = equivariance(folder)
        print(
            f"3. translation-equivariant model, tiled vs untiled: max diff "
            f"{results['equivariance_eps_units']:.2f} x eps x max|y|",
            flush=True,
        )
        others = {}
        for label, kw in monai.items():
            t, cpu = best[label]
            others[label] = {
                "seconds": t,
                "cpu_seconds": cpu,
                "mpx_per_s": mpx / t,
                "densekit_speedup": t / e2e,
                "densekit_speedup_cpu": cpu / e2e_cpu,
                **kw,
            }
            print(
                f"4. MONAI sliding_window_inference ({label}): {mpx / t:.3f} Mpx/s; "
                f"densekit x{t / e2e:.2f} wall, x{cpu / e2e_cpu:.2f} process CPU",
                flush=True,
            )
        if args.terratorch_python:
            cmd = [
                args.terratorch_python,
                str(ROOT / "benchmarks" / "tiling_terratorch.py"),
                "--tile",
                str(args.tile),
                "--overlap",
                str(args.overlap),
                "--batch",
                str(args.batch),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            if done.returncode or not lines:
                others["terratorch"] = {"error": (done.stderr or done.stdout)[-800:]}
                print(f"4. TerraTorch failed: {(done.stderr or done.stdout)[-300:]}", flush=True)
            else:
                for label, rec in json.loads(lines[-1]).items():
                    if "seconds" in rec:
                        rec["densekit_speedup"] = rec["seconds"] / e2e
                        print(
                            f"4. TerraTorch tiled_inference ({label}): {mpx / rec['seconds']:.3f} "
                            f"Mpx/s; densekit x{rec['seconds'] / e2e:.2f}",
                            flush=True,
                        )
                    else:
                        print(f"4. TerraTorch ({label}): {rec}", flush=True)
                    others[f"terratorch_{label}"] = rec
        results["others"] = others
        if not args.skip_memory:
            print("2. memory (each size in its own process):", flush=True)
            results["memory"] = measure_memory(folder, args.memory_tile, args.overlap)
            mem = results["memory"]
            print(
                f"2. peak RSS 20000^2 / 2000^2 = {mem['ratio_20000_over_2000']:.3f} (goal <= 1.2);"
                f" growth while tiling {mem['growth_mib'][0]:.0f} / {mem['growth_mib'][1]:.0f} MiB",
                flush=True,
            )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
