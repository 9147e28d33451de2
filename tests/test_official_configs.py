"""Every config in configs/official runs its command (`densekit fit` or `test`, named in its
header) with the tiny head and backbone fixtures of the same kind in place of Meta's files."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from helpers import REPO, TEST_DATA
from official_heads import needs_head_fixtures, tiny_head

from densekit.cli import main
from densekit.models.official import official_kind

CONFIGS = sorted((REPO / "configs" / "official").glob("*.yaml"))
CHIPS = TEST_DATA / "chips" / "depth"
# the tiny fixture standing for each kind
FIXTURES = {
    "dinov3_chmv2": "dinov3_vits16_tiny_chmv2_dpt_head_tiny",
    "dinov3_dpt_depth": "dinov3_vit7b16_tiny_synthmix_dpt_head_tiny",
    "dinov2_dpt_depth": "dinov2_vits14_tiny_nyu_dpt_head_tiny",
    "dinov2_linear_depth": "dinov2_vits14_tiny_nyu_linear4_head_tiny",
}


def test_there_are_configs():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_runs_its_command(config, tmp_path):
    needs_head_fixtures()
    text = config.read_text()
    command = re.search(r"densekit (fit|test) --config configs/official/" + config.name, text)
    assert command, f"{config.name}: the header names no `densekit fit|test --config` command"
    init = yaml.safe_load(text)["model"]["init_args"]
    t = tiny_head(FIXTURES[official_kind(init["official_head"]["kind"])])
    official = {"kind": t.kind, "weights": str(t.path), "layers": t.layers}
    if t.depth_range is not None:
        official["depth_range"] = list(t.depth_range)
    m, d = "--model.init_args.", "--data.init_args."
    argv = [command.group(1), "--config", str(config)]
    argv += [m + "backbone", t.backbone, m + "weights", str(t.backbone_weights)]
    argv += [m + "backbone_overrides", json.dumps(t.overrides)]
    argv += [m + "official_head", json.dumps(official)]
    argv += [d + "images", str(CHIPS / "images"), d + "depths", str(CHIPS / "depths")]
    if "window" in yaml.safe_load(text)["data"]["init_args"]:
        argv += [d + "window", "64"]  # the chips are 60 pixels wide
    if command.group(1) == "test":
        argv += [d + "test_images", str(CHIPS / "images_val")]
        argv += [d + "test_depths", str(CHIPS / "depths_val")]
    argv += [d + "depth_scale", "1.0", "--trainer.default_root_dir", str(tmp_path)]
    argv += ["--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false"]
    assert main(argv) == 0


def test_predict_writes_depth_windows_of_a_released_head(tmp_path):
    """`densekit predict` with Meta's DINOv2 NYU head (tiny): one float32 depth GeoTIFF per
    test window, within the head's 0.001-10 m."""
    import numpy as np
    import rasterio

    needs_head_fixtures()
    t = tiny_head(FIXTURES["dinov2_dpt_depth"])
    official = {"kind": t.kind, "weights": str(t.path), "layers": t.layers}
    m, d = "--model.init_args.", "--data.init_args."
    argv = ["predict", "--config", str(REPO / "configs/official/dinov2_nyu_depth.yaml")]
    argv += [m + "weights", str(t.backbone_weights), m + "official_head", json.dumps(official)]
    argv += [m + "backbone_overrides", json.dumps(t.overrides)]
    argv += [d + "images", str(CHIPS / "images"), d + "depths", str(CHIPS / "depths")]
    argv += [d + "test_images", str(CHIPS / "images_val")]
    argv += [d + "test_depths", str(CHIPS / "depths_val"), d + "depth_scale", "1.0"]
    argv += ["--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    assert main(argv) == 0
    written = sorted(tmp_path.rglob("predictions/*.tif"))
    assert len(written) == len(list((CHIPS / "images_val").glob("*.tif")))
    for path in written:
        with rasterio.open(path) as src:
            depth = src.read(1)
            assert src.dtypes[0] == "float32"
        assert np.isfinite(depth).all() and 0.001 <= depth.min() <= depth.max() <= 10.0
