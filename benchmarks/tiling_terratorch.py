#!/usr/bin/env python3
"""TerraTorch's ``tiled_inference`` on the Blue Marble with benchmarks/tiling.py's model.

Run by ``benchmarks/tiling.py --terratorch-python PYTHON`` in an environment that has TerraTorch
(it is not a densekit dependency). Prints one JSON line: seconds (read + inference + class map)
at densekit's tile and overlap and at TerraTorch's defaults, or the error it raised.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiling import BLUE_MARBLE, build_model


def run(model, crop: int, stride: int, batch: int | None) -> dict:
    from terratorch.tasks.tiled_inference import tiled_inference

    tic = time.perf_counter()
    with rasterio.open(BLUE_MARBLE) as s:
        x = torch.from_numpy(s.read().astype(np.float32))[None]
    kwargs = {"crop": crop, "stride": stride}
    if batch is not None:
        kwargs["batch_size"] = batch
    try:
        out = tiled_inference(model, x, out_channels=model.channels, **kwargs)
    except Exception as e:  # reported, not hidden
        return {"error": f"{type(e).__name__}: {e}"[:500], **kwargs}
    if out.numel() == 0:
        return {"error": f"returned an empty tensor {tuple(out.shape)}", **kwargs}
    out.argmax(1).to(torch.uint8)
    return {"seconds": time.perf_counter() - tic, "shape": list(out.shape), **kwargs}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tile", type=int, default=224)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model("vitt", Path(tmp), "cpu", False)
        same = run(model, args.tile, args.tile - args.overlap, args.batch)
        defaults = run(model, 224, 192, None)
    print(json.dumps({"same_tile_overlap": same, "defaults": defaults}))


if __name__ == "__main__":
    main()
