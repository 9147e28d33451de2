"""benchmarks/pixel_detail.py end to end on the LEVIR-CD samples with a tiny budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, needs_shared_data


@pytest.mark.slow
def test_pixel_detail_table(tmp_path):
    needs_shared_data("levir-cd-samples")
    methods = ["logreg", "rf", "unet", "linear", "linear+all"]
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "pixel_detail.py"),
        "--sets",
        "levir",
        "--methods",
        *methods,
        "--budget",
        "2",
        "--threads",
        "1",
        "--seeds",
        "0",
        "1",
        "--pixels",
        "5000",
        "--rf-pixels",
        "5000",
        "--out",
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())["results"]["levir"]
    assert sorted(results) == sorted(methods)
    for method, record in results.items():
        assert 0.0 <= record["value"] <= 1.0, (method, record)
        assert record["seconds"] > 0 and len(record["values"]) == 2  # two seeds
        assert record["std"] is not None
    table = (tmp_path / "table.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("|")}
    for method in methods:
        cell = rows[method].split("|")[2].strip()
        assert 0.0 <= float(cell.split()[0]) <= 1.0, rows[method]
    assert "LEVIR-CD change F1" in done.stdout


def test_training_windows_keep_image_and_mask_aligned():
    """Every random window, flipped or not, carries the mask of its own pixels: band 0 holds
    each pixel's position, the mask is a function of band 1, so a flip applied to the image but
    not to the mask (or along another axis) shows."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch
    from pixel_detail_data import WINDOW, RandomWindows, Region

    h, w = 300, 260
    rows, cols = np.mgrid[:h, :w]
    values = np.random.default_rng(0).normal(size=(h, w)).astype(np.float32)
    image = np.stack([rows * 1000 + cols, values]).astype(np.float32)
    mask = (values > 0.3).astype(np.int64)
    windows = RandomWindows([Region([image, image * 2], mask)], [0, 1], length=60)
    torch.manual_seed(0)
    seen = set()
    for i in range(len(windows)):
        item = windows[i]
        x1, x2, target = item["image1"].numpy(), item["image2"].numpy(), item["mask"].numpy()
        assert x1.shape == (2, WINDOW, WINDOW) and np.array_equal(x2, x1 * 2)
        where = x1[0].astype(np.int64)
        assert np.array_equal(x1[1], values[where // 1000, where % 1000]), i
        assert np.array_equal(target, mask[where // 1000, where % 1000]), i
        seen.add((bool(where[0, 0] > where[0, -1]), bool(where[0, 0] > where[-1, 0])))
    assert len(seen) == 4  # unflipped, flipped left-right, up-down and both were all drawn


def _results(budget: float, cells: dict) -> dict:
    return {"budget_s": budget, "seeds": [0, 1], "threads": 1, "results": {"levir": cells}}


@pytest.mark.slow
def test_merge_makes_one_table_and_refuses_mixed_protocols(tmp_path):
    cell = {"value": 0.5, "std": 0.1, "values": [0.4, 0.6], "seconds": 61.0, "steps": 100}
    a, b, c = (tmp_path / f"{k}.json" for k in "abc")
    a.write_text(json.dumps(_results(60, {"logreg": {**cell, "steps": None}})))
    b.write_text(json.dumps(_results(60, {"linear+pixel": {**cell, "value": 0.7}})))
    c.write_text(json.dumps(_results(30, {"unet": cell})))
    script = str(REPO / "benchmarks" / "pixel_detail.py")

    def merge(*paths, out=None):
        extra = ["--out", str(out)] if out else []
        cmd = [sys.executable, script, "--merge", *map(str, paths), *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    done = merge(a, b, out=tmp_path / "merged")
    assert done.returncode == 0, done.stderr[-2000:]
    table = (tmp_path / "merged" / "table.md").read_text()
    assert "| logreg | 0.500 ± 0.100 (61 s) |" in table
    assert "| linear+pixel | 0.700 ± 0.100 (61 s, 100 steps) |" in table
    assert "| best head - best baseline | +0.200 |" in table
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert sorted(merged["results"]["levir"]) == ["linear+pixel", "logreg"]

    mixed = merge(a, c)
    assert mixed.returncode != 0 and "budget_s" in mixed.stderr
    twice = merge(a, a)
    assert twice.returncode != 0 and "levir / logreg is in more than one file" in twice.stderr
