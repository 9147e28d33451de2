"""Checkpoints hold the head and its hyper-parameters; the backbone is named by path and sha256,
checked when loading."""

import json

import pytest
import torch
from helpers import FIXTURES, TEST_DATA

from densekit.errors import DensekitError
from densekit.tasks import DepthTask, SegmentationTask

CHIPS = TEST_DATA / "chips"


@pytest.fixture(scope="module")
def vits_weights(tmp_path_factory):
    """A full-size DINOv2 ViT-S/14 file in the official layout (random values)."""
    keys = json.loads((FIXTURES / "keys" / "dinov2_vits14.json").read_text())
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=g) * 0.02 for k, shape in keys}
    path = tmp_path_factory.mktemp("w") / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    return path


def train_briefly(task, tmp_path, chips, fit):
    """Two training steps on the segmentation chips, saved as ``head.ckpt``."""
    data = chips("segmentation", val=False, batch_size=4)
    trainer = fit(task, data, seed=None, max_steps=2, default_root_dir=tmp_path)
    path = tmp_path / "head.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_vit_s_linear_checkpoint_is_small_and_round_trips(vits_weights, tmp_path, chips, fit):
    task = SegmentationTask(num_classes=3, weights=str(vits_weights), scale=1 / 255)
    path = train_briefly(task, tmp_path, chips, fit)
    size = path.stat().st_size
    assert size < 200_000, size  # the 22M-parameter backbone is not in it
    ckpt = torch.load(path, weights_only=True)
    assert not [k for k in ckpt["state_dict"] if k.startswith("model.backbone.")]
    assert ckpt["densekit"]["backbone"]["sha256"] == task.model.backbone.weights.sha256
    assert ckpt["densekit"]["task"] == "SegmentationTask"
    loaded = SegmentationTask.load_from_checkpoint(path, weights_only=True)
    x = torch.rand(1, 3, 40, 50) * 255
    task.eval()
    torch.testing.assert_close(loaded.eval()(x), task(x))


def test_changed_or_missing_backbone_weights_are_errors(vits_weights, tmp_path, chips, fit):
    task = SegmentationTask(num_classes=3, weights=str(vits_weights), scale=1 / 255)
    path = train_briefly(task, tmp_path, chips, fit)
    changed = tmp_path / "changed.pth"
    sd = torch.load(vits_weights, weights_only=True)
    sd["norm.bias"] = sd["norm.bias"] + 1
    torch.save(sd, changed)
    with pytest.raises(DensekitError, match=r"trained on backbone weights .*sha256 .*file changed"):
        SegmentationTask.load_from_checkpoint(path, weights=str(changed), weights_only=True)
    with pytest.raises(DensekitError, match=r"no such file or folder"):
        SegmentationTask.load_from_checkpoint(
            path, weights=str(tmp_path / "gone.pth"), weights_only=True
        )


def test_checkpoint_of_another_task_is_an_error(vits_weights, tmp_path, chips, fit):
    task = SegmentationTask(num_classes=3, weights=str(vits_weights), scale=1 / 255)
    path = train_briefly(task, tmp_path, chips, fit)
    depth = DepthTask(weights=str(vits_weights), scale=1 / 255)
    ckpt = torch.load(path, weights_only=True)
    with pytest.raises(
        DensekitError, match=r"the checkpoint is a SegmentationTask, not a DepthTask"
    ):
        depth.on_load_checkpoint(ckpt)


def test_random_backbone_is_saved_since_it_cannot_be_recreated(tmp_path, chips, fit):
    with pytest.warns(UserWarning, match="RANDOM"):
        task = SegmentationTask(
            num_classes=3,
            weights="random",
            scale=1 / 255,
            backbone_overrides={"embed_dim": 64, "depth": 2, "num_heads": 2},
        )
    path = train_briefly(task, tmp_path, chips, fit)
    ckpt = torch.load(path, weights_only=True)
    assert any(k.startswith("model.backbone.") for k in ckpt["state_dict"])
    with pytest.warns(UserWarning, match="RANDOM"):
        loaded = SegmentationTask.load_from_checkpoint(path, weights_only=True)
    x = torch.rand(1, 3, 28, 28) * 255
    torch.testing.assert_close(loaded.eval()(x), task.eval()(x))


def test_checkpoint_of_another_task_through_load_from_checkpoint(
    vits_weights, tmp_path, chips, fit
):
    task = SegmentationTask(num_classes=3, weights=str(vits_weights), scale=1 / 255)
    path = train_briefly(task, tmp_path, chips, fit)
    with pytest.raises(
        DensekitError, match=r"the checkpoint is a SegmentationTask, not a DepthTask"
    ):
        DepthTask.load_from_checkpoint(path)


def test_random_backbone_checkpoint_refuses_other_weights(tmp_path, chips, fit):
    tiny = {"embed_dim": 64, "depth": 6, "num_heads": 2, "mlp_ratio": 4}
    with pytest.warns(UserWarning, match="RANDOM"):
        task = SegmentationTask(
            num_classes=3, weights="random", scale=1 / 255, backbone_overrides=tiny
        )
    path = train_briefly(task, tmp_path, chips, fit)
    fresh = SegmentationTask(
        num_classes=3,
        scale=1 / 255,
        backbone_overrides=tiny,
        weights=str(FIXTURES / "tiny" / "dinov2_vits14_tiny.pth"),
    )
    with pytest.raises(DensekitError, match=r"trained on a random backbone .*weights='random'"):
        fresh.on_load_checkpoint(torch.load(path, weights_only=True))
