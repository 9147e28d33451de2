"""benchmarks/pixel_detail.py end to end on the LEVIR-CD samples with a tiny budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import REPO, needs_shared_data


def test_pixel_detail_table(tmp_path):
    needs_shared_data("levir-cd-samples")
    methods = ["logreg", "rf", "unet", "linear", "linear+all"]
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "pixel_detail.py"),
        "--sets", "levir", "--methods", *methods, "--budget", "2", "--threads", "1", "--seeds", "0", "1",
        "--pixels", "5000", "--rf-pixels", "5000", "--out", str(tmp_path),
    ]  # fmt: skip
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
