#!/usr/bin/env python3
"""Shared helper of the prepare scripts: check a dataset folder against its expected layout and
write the data-config fragment that points densekit's loaders at it.

densekit reads these datasets in their published layouts (patterns pair images, dates and labels;
per-band Sentinel-2 files are read as band folders), so "preparing" means checking that the
download is complete and writing the paths. Usage (from a prepare.py):

    main(description, patterns={"images": "...", "labels": "..."}, extra={...})
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import yaml


def main(description: str, patterns: dict[str, str], extra: dict | None = None) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", required=True, help="folder of the downloaded dataset")
    parser.add_argument("--out", required=True, help="YAML data-config fragment to write")
    args = parser.parse_args()
    root = Path(args.root).expanduser().resolve()
    init_args: dict = {}
    for key, pattern in patterns.items():
        full = str(root / pattern)
        found = sorted(glob.glob(full))
        if not found:
            print(
                f"error: {key}: nothing matches {full}; is {root} the dataset folder?",
                file=sys.stderr,
            )
            return 2
        print(f"{key}: {len(found)} match(es) for {pattern}")
        init_args[key] = full
    init_args.update(extra or {})
    Path(args.out).write_text(
        f"# written by {Path(sys.argv[0]).name} for {root}\n"
        "# include after a config: densekit fit --config CONFIG.yaml --config THIS.yaml\n"
        + yaml.safe_dump({"data": {"init_args": init_args}}, sort_keys=False)
    )
    print(f"wrote {args.out}")
    return 0
