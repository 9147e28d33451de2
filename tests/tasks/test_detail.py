"""The pixel-detail options: input scaling, the guided upsampler, the pixel branch, the bands the
backbone sees; their geometry, learning, errors, checkpoints and feature-cache keys."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import random_tiny_weights

from densekit.errors import DensekitError
from densekit.heads.refine import GuidedUpsampler, resample, upsample_to
from densekit.models.inputs import coverage
from densekit.tasks import ChangeDetectionTask, DepthTask, SegmentationTask

DIMS = {"embed_dim": 32, "depth": 4, "num_heads": 2}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "vit.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return random_tiny_weights(path, **DIMS)


def seg(weights, bands=3, **kw):
    kw.setdefault("dpt_features", 32)
    return SegmentationTask(
        num_classes=2,
        backbone="dinov2_vits14",
        weights=weights,
        backbone_overrides=DIMS,
        in_channels=bands,
        mean=[0.0] * bands,
        std=[1.0] * bands,
        **kw,
    )


def test_resample_matches_bilinear_upsampling_of_the_padded_input():
    y = torch.randn(2, 3, 4, 5)
    size = (50, 61)  # padded to 56 x 70 by a 14-pixel patch
    expected = upsample_to(y, size, 14)
    got = resample(y, size, coverage(size, 14, 1.0))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_coverage_with_input_scaling():
    # 50 px x 1.5 = 75 px, padded to 84 (6 patches of 14) = 56 input pixels
    assert coverage((50, 28), 14, 1.5) == pytest.approx((84 * 50 / 75, 42 * 28 / 42))


def test_guided_upsampler_is_a_convex_combination_and_keeps_constants():
    torch.manual_seed(0)
    up = GuidedUpsampler(guide_in=4)
    image = torch.randn(2, 4, 30, 44)
    y = torch.randn(2, 3, 3, 4)
    out = up(y, image, coverage((30, 44), 11, 1.0))
    assert out.shape == (2, 3, 30, 44)
    lo = y.amin(dim=(2, 3), keepdim=True)
    hi = y.amax(dim=(2, 3), keepdim=True)
    assert bool(((out >= lo - 1e-5) & (out <= hi + 1e-5)).all())
    const = torch.full((2, 3, 3, 4), 0.7)
    torch.testing.assert_close(up(const, image, (33.0, 44.0)), torch.full_like(out, 0.7))


def test_guided_upsampler_learns_edges_that_bilinear_blurs():
    """A label with an edge inside the patches: its coarse (patch-averaged) version, upsampled
    bilinearly, blurs the edge; the guided upsampler, guided by an image with the edge, learns
    to put it back."""
    torch.manual_seed(0)
    size, patch = 32, 8
    images, targets = [], []
    for _ in range(16):
        t = torch.zeros(1, 1, size, size)
        c = int(torch.randint(3, size - 3, ()))
        if torch.rand(()) < 0.5:
            t[..., :, c:] = 1
        else:
            t[..., c:, :] = 1
        images.append(t + 0.05 * torch.randn_like(t))
        targets.append(t)
    image, target = torch.cat(images), torch.cat(targets)
    coarse = F.avg_pool2d(target, patch)
    cover = (float(size), float(size))
    bilinear_err = (resample(coarse, (size, size), cover) - target).abs().mean()
    up = GuidedUpsampler(guide_in=1)
    opt = torch.optim.Adam(up.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        loss = (up(coarse, image, cover) - target).abs().mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        guided_err = (up(coarse, image, cover) - target).abs().mean()
    assert guided_err < 0.5 * bilinear_err, (float(guided_err), float(bilinear_err))


@pytest.mark.parametrize("head", ["linear", "dpt"])
def test_options_give_full_resolution_outputs_and_train(weights, head):
    layers = "last" if head == "linear" else "dpt"
    task = seg(
        weights,
        bands=5,
        head=head,
        layers=layers,
        input_upscale=1.5,
        upsampler="guided",
        pixel_branch=8,
        backbone_bands=[2, 1, 0],
    )
    x = torch.randn(2, 5, 50, 61)
    y = task(x)
    assert y.shape == (2, 2, 50, 61)
    y.sum().backward()
    assert task.model.detail is not None
    assert all(p.grad is not None for p in task.model.detail.parameters() if p.requires_grad)
    assert all(p.grad is None for p in task.model.backbone.parameters())


def test_backbone_sees_only_its_bands_and_the_scaled_image(weights):
    task = seg(weights, bands=5, input_upscale=2.0, pixel_branch=4, backbone_bands=[0, 1, 2])
    seen = []
    original = task.model.backbone.forward_with_class_tokens

    def spy(x):
        seen.append(tuple(x.shape))
        return original(x)

    task.model.backbone.forward_with_class_tokens = spy
    x = torch.randn(1, 5, 28, 42)
    with torch.no_grad():
        a = task.eval()(x)
        x2 = x.clone()
        x2[:, 3:] += 5.0  # bands the backbone does not see; the pixel branch does
        b = task(x2)
        feats = [task.model.encode([x])[0][0], task.model.encode([x2])[0][0]]
    assert seen[0] == (1, 3, 56, 84)
    torch.testing.assert_close(feats[0], feats[1])
    assert not torch.allclose(a, b)


def test_pixel_branch_stays_small_and_is_reported(weights):
    task = seg(weights, bands=13, pixel_branch=16, upsampler="guided", backbone_bands=[3, 2, 1])
    sizes = task.model.parameter_counts()
    assert 1_000 < sizes["pixel branch"] < 10_000
    assert sum(sizes.values()) < 50_000


def test_change_and_depth_with_options(weights):
    change = ChangeDetectionTask(
        backbone="dinov2_vits14",
        weights=weights,
        backbone_overrides=DIMS,
        mean=[0.0] * 3,
        std=[1.0] * 3,
        upsampler="guided",
        pixel_branch=8,
        input_upscale=2.0,
    )
    a, b = torch.randn(2, 3, 28, 28), torch.randn(2, 3, 28, 28)
    assert change(a, b).shape == (2, 1, 28, 28)
    # the fusion sees the head's 32 detail channels and [p1, p2, |p2 - p1|] of the pixel branch
    assert change.model.detail.fuse[0].in_channels == 32 + 3 * 8
    depth = DepthTask(
        backbone="dinov2_vits14",
        weights=weights,
        backbone_overrides=DIMS,
        head="dpt",
        layers="dpt",
        dpt_features=16,
        mean=[0.0] * 3,
        std=[1.0] * 3,
        upsampler="guided",
        pixel_branch=8,
    )
    assert depth(torch.randn(2, 3, 28, 28)).shape == (2, 1, 28, 28)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_upscale": 0}, "input_upscale must be a finite number > 0"),
        ({"input_upscale": float("inf")}, "input_upscale must be a finite number > 0"),
        ({"detail_channels": 16}, "detail_channels 16 is used only with a pixel branch"),
        ({"upsampler": "bicubic"}, "valid values are 'bilinear' and 'guided'"),
        ({"pixel_branch": -1}, "pixel_branch must be >= 0"),
        ({"backbone_bands": [0, 3]}, "backbone_bands [0, 3]"),
        ({"backbone_bands": [1, 1, 2]}, "distinct positions"),
        ({"head": "unet", "pixel_branch": 8}, "not to the U-Net baseline"),
        ({"head_grid": {"lr": [0.1, 0.01]}, "upsampler": "guided"}, "cannot be combined"),
    ],
)
def test_bad_options_are_named(weights, kwargs, message):
    with pytest.raises(DensekitError, match=message.replace("[", r"\[").replace("]", r"\]")):
        seg(weights, **kwargs)


def test_checkpoint_round_trip_with_options(weights, tmp_path):
    import lightning as L

    task = seg(weights, bands=4, input_upscale=2.0, upsampler="guided", pixel_branch=4)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(task)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = SegmentationTask.load_from_checkpoint(str(path), map_location="cpu")
    x = torch.randn(1, 4, 30, 30)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), task.eval()(x))
    assert loaded.hp.upsampler == "guided" and loaded.hp.input_upscale == 2.0


def test_input_scaling_and_backbone_bands_change_the_feature_cache_key(weights, tmp_path):
    """Same statistics for every band: only the key's record of the options tells them apart."""
    keys = []
    for options in (
        {},
        {"input_upscale": 2.0},
        {"backbone_bands": [0, 1, 2]},
        {"backbone_bands": [2, 1, 0]},
        {"backbone_bands": [3, 4, 0]},
    ):
        task = seg(weights, bands=5, feature_cache=str(tmp_path / "cache"), **options)
        assert task.model.feature_cache is not None
        keys.append(task.model.cache_model_key())
    assert len(set(keys)) == len(keys)


def test_backbone_bands_need_statistics_for_every_input_band(weights):
    with pytest.raises(DensekitError, match="backbone_bands: give mean and std"):
        SegmentationTask(
            backbone="dinov2_vits14",
            weights=weights,
            backbone_overrides=DIMS,
            scale=1 / 255,
            backbone_bands=[2, 1, 0],
        )
