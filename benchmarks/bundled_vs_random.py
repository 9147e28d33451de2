#!/usr/bin/env python3
"""The bundled backbone against the same architecture with random weights, one run.

For each config in ``configs/bundled/`` (SpaceNet Atlanta buildings, Sen1Floods11 water, OSCD
change; real data from ../shared/data), and each seed, it trains the linear head twice through
the public CLI, once on ``densekit_vitt16``'s bundled weights and once on random weights
(``--model.init_args.weights random``), then tests the last checkpoint on the config's test
split (``densekit test``) and prints the class of interest's IoU and F1 and the macro mIoU of
each, with the difference.

Usage: python benchmarks/bundled_vs_random.py [--seeds 0 1] [--only spacenet] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# config stem -> the metric keys of the class of interest in test_metrics.json
TARGETS = {
    "spacenet_buildings_linear": "building",
    "sen1floods11_water_linear": "water",
    "oscd_change_linear": "change",
}


def run(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "densekit.cli", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")


def train_and_test(config: Path, weights: str, seed: int, root: Path) -> dict:
    folder = root / config.stem / f"{weights}_seed{seed}"
    common = [
        "--config",
        str(config),
        "--seed_everything",
        str(seed),
        "--model.init_args.weights",
        weights,
        "--trainer.default_root_dir",
        str(folder),
    ]
    tic = time.perf_counter()
    run(["fit", *common, "--trainer.logger", "false"])
    ckpts = sorted(folder.glob("checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        sys.exit(f"no checkpoint in {folder}/checkpoints")
    run(["test", *common, "--trainer.logger", "false", "--ckpt_path", str(ckpts[-1])])
    record = json.loads((folder / "test_metrics.json").read_text())
    record["seconds"] = time.perf_counter() - tic
    return record


def pick(metrics: dict, target: str) -> dict[str, float]:
    found = {}
    for key, value in metrics.items():
        name = key.split("/", 1)[-1]
        if name in (f"iou_{target}", f"f1_{target}", "miou", "iou", "f1"):
            found[name.replace(f"_{target}", "")] = float(value)
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--only", default=None, help="run the configs whose name contains this")
    p.add_argument("--runs", default=str(ROOT / "runs" / "bundled_vs_random"))
    p.add_argument("--out", default=None)
    args = p.parse_args()
    results: dict = {}
    for config in sorted((ROOT / "configs" / "bundled").glob("*.yaml")):
        if args.only and args.only not in config.stem:
            continue
        target = TARGETS[config.stem]
        for seed in args.seeds:
            row = {}
            for weights in ("bundled", "random"):
                rec = train_and_test(config, weights, seed, Path(args.runs))
                row[weights] = {"metrics": pick(rec["metrics"], target), "seconds": rec["seconds"]}
                row[weights]["all"] = rec["metrics"]
            results.setdefault(config.stem, {})[seed] = row
            b, r = row["bundled"]["metrics"], row["random"]["metrics"]
            shown = ", ".join(
                f"{k} {b[k]:.3f} vs {r[k]:.3f} ({b[k] - r[k]:+.3f})" for k in sorted(b) if k in r
            )
            print(f"{config.stem} seed {seed} [{target}] bundled vs random: {shown}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
