"""Fine-tuning Meta's released heads: `densekit fit` starts from Meta's weights (by config),
trains the head only, and the checkpoint tiles like any other; `densekit test` scores a released
head on real RGB-D frames."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import needs_shared_data
from official_heads import needs_head_fixtures, tiny_head

from densekit.cli import main
from densekit.models import DenseModel
from densekit.tasks import DepthTask

CHMV2 = "dinov3_vits16_tiny_chmv2_dpt_head_tiny"


def official_args(name: str) -> dict:
    t = tiny_head(name)
    return {
        "backbone": t.backbone,
        "weights": str(t.backbone_weights),
        "backbone_overrides": t.overrides,
        "head": "official",
        "official_head": {"kind": t.kind, "weights": str(t.path), "layers": t.layers},
        "scale": 1 / 255,
    }


def test_fit_starts_from_metas_weights_and_trains_the_head_only(chips, fit, tmp_path):
    needs_head_fixtures()
    t = tiny_head(CHMV2)
    task = DepthTask(**official_args(CHMV2), lr=1e-3, loss="l1", height=True)
    meta = torch.load(t.path, weights_only=True)
    head = task.model.head.decoder.state_dict()
    assert all(torch.equal(head[k], meta[k]) for k in meta)  # initialised from Meta's file
    backbone = {k: v.clone() for k, v in task.model.backbone.state_dict().items()}
    fit(task, chips("depth", height=True), max_steps=3)
    trained = task.model.head.decoder.state_dict()
    assert any(not torch.equal(trained[k], meta[k]) for k in meta)
    assert all(torch.equal(v, backbone[k]) for k, v in task.model.backbone.state_dict().items())
    path = task.model.save(tmp_path / "tuned.ckpt", task="DepthTask")
    model = DenseModel.from_checkpoint(path)
    x = torch.rand(1, 3, 64, 80) * 255
    with torch.no_grad():
        assert torch.equal(model(x), task.model.eval()(x))
    assert model.record("DepthTask")["official_head"]["sha256"] == t.meta["sha256"][t.path.name]


@pytest.mark.slow
def test_test_scores_a_released_depth_head_on_real_rgbd_frames(tmp_path, capsys):
    frames = needs_shared_data("rgbd-depth-open3d")
    needs_head_fixtures()
    t = tiny_head("dinov2_vits14_tiny_nyu_dpt_head_tiny")
    head = tmp_path / "dinov2_vits14_nyu_dpt_head.pth"  # the released file's name
    head.write_bytes(t.path.read_bytes())
    official = {"kind": "dinov2_vits14_nyu_dpt", "weights": str(head), "layers": t.layers}
    argv = ["test", "--config", "configs/official/dinov2_nyu_depth.yaml"]
    argv += ["--model.init_args.weights", str(t.backbone_weights)]
    argv += ["--model.init_args.backbone_overrides", json.dumps(t.overrides)]
    argv += ["--model.init_args.official_head", json.dumps(official)]
    argv += ["--data.init_args.images", str(frames / "color")]
    argv += ["--data.init_args.depths", str(frames / "depth")]
    argv += ["--data.init_args.test_images", str(frames / "color")]
    argv += ["--data.init_args.test_depths", str(frames / "depth")]
    argv += ["--trainer.default_root_dir", str(tmp_path / "run")]
    argv += ["--trainer.enable_progress_bar", "false"]
    assert main(argv) == 0
    [metrics_file] = (tmp_path / "run").rglob("test_metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert {"rmse", "mae", "absrel", "delta1", "delta2", "delta3"} <= set(metrics["metrics"])
    assert all(v >= 0 for v in metrics["metrics"].values())
    assert metrics["official_head"]["kind"] == "dinov2_dpt_depth"
    assert metrics["official_head"]["depth_range"] == [0.001, 10.0]  # NYU, by the name
    assert metrics["official_head"]["licence"] == "Apache-2.0"
