"""DINO (v1) backbones: Meta's outputs on every tiny DINO fixture, strict loading of the official
layouts, files of another family named, the ResNet-50's stages, and training on them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from helpers import FIXTURES, REPO, SHARED, TEST_DATA

from densekit import load_backbone
from densekit.backbones.arch import build_timm_model, resolve_arch
from densekit.backbones.checkpoint import identify, signature_of_state_dict
from densekit.backbones.layout import official_layout
from densekit.backbones.load import check_weights_fit
from densekit.backbones.registry import REGISTRY, get_spec
from densekit.errors import WeightsError

SHARED_TINY = SHARED / "fixtures" / "dino_reference" / "tiny"
DINO = ["dino_vits16", "dino_vits8", "dino_vitb16", "dino_vitb8", "dino_resnet50"]


def shared_fixtures() -> list[str]:
    """Every tiny DINO (v1) fixture in the shared folder (none when it is absent: skipped)."""
    return sorted(p.stem for p in SHARED_TINY.glob("dino_*_tiny.json"))


def needs_shared_tiny() -> None:
    if not SHARED_TINY.is_dir():
        pytest.skip(f"shared fixture folder {SHARED_TINY} is absent")


def registry_name(fixture: str, kwargs: dict) -> str:
    """The entry a fixture is an instance of: its own name, else the ViT of its patch size."""
    name = fixture.removesuffix("_tiny")
    if name in REGISTRY:
        return name
    return f"dino_vits{int(kwargs['patch_size'])}"


def load_fixture(fixture: str):
    meta = json.loads((SHARED_TINY / f"{fixture}.json").read_text())
    kw = meta["kwargs"]
    img = kw.get("img_size", 224)
    overrides = {
        "embed_dim": kw["embed_dim"],
        "depth": kw["depth"],
        "num_heads": kw["num_heads"],
        "mlp_ratio": kw.get("mlp_ratio", 4),
        "img_size": img[0] if isinstance(img, list) else img,
    }
    backbone = load_backbone(
        registry_name(fixture, kw), SHARED_TINY / f"{fixture}.pth", layers="last4", **overrides
    )
    inputs = torch.load(SHARED_TINY / meta["input_file"], weights_only=True)
    expected = torch.load(SHARED_TINY / f"{fixture}.expected.pt", weights_only=True)["sizes"]
    return backbone, inputs, expected


@pytest.mark.parametrize("fixture", shared_fixtures() or ["none"])
def test_get_intermediate_layers_matches_official_at_every_size(fixture):
    """The official ``get_intermediate_layers(x, n=4)`` (normed full sequences: patches
    reshaped, cls = token 0) and ``forward(x)`` (the normed cls token), within 1e-5, at the
    native grid and at other sizes (DINO's own position-embedding interpolation)."""
    needs_shared_tiny()
    assert shared_fixtures(), f"no dino_*_tiny fixture in {SHARED_TINY}"
    backbone, inputs, expected = load_fixture(fixture)
    assert inputs.keys() == expected.keys() and len(inputs) >= 4
    for size, x in inputs.items():
        want = expected[size]
        out = backbone.get_intermediate_layers(
            x, n=4, reshape=True, return_class_token=True, norm=True
        )
        patches = torch.stack([p for p, _ in out])
        classes = torch.stack([c for _, c in out])
        assert patches.shape == want["gil_patch"].shape, size
        torch.testing.assert_close(patches, want["gil_patch"], rtol=0, atol=1e-5, msg=size)
        torch.testing.assert_close(classes, want["gil_cls"], rtol=0, atol=1e-5, msg=size)
        torch.testing.assert_close(classes[-1], want["x_norm_clstoken"], rtol=0, atol=1e-5)
        # forward() pads to the patch grid: on multiples of the patch it is the same output
        maps = backbone(x)
        torch.testing.assert_close(torch.stack(maps), patches, rtol=0, atol=0)


def test_timm_resampling_is_not_dinos():
    """The trap the fixtures record: timm's own position-embedding resampling differs from
    DINO's away from the native grid, so a test at a non-native size can fail."""
    needs_shared_tiny()
    backbone, inputs, expected = load_fixture("dino_vits16_tiny")
    model = backbone.model
    x = inputs["5x7"]
    with torch.no_grad():
        tokens = model.forward_features(x)  # timm's forward: its own interpolation
    timm_cls = tokens[:, 0]
    ours = backbone.get_intermediate_layers(x, n=1, return_class_token=True)[0][1]
    want = expected["5x7"]["x_norm_clstoken"]
    assert (timm_cls - want).abs().max() > 1e-3
    torch.testing.assert_close(ours, want, rtol=0, atol=1e-5)


def zero_state_dict(name: str) -> dict[str, torch.Tensor]:
    keys = json.loads((FIXTURES / "keys" / f"{name}.json").read_text())
    return {
        k: torch.zeros(shape, dtype=torch.int64 if k.endswith("num_batches_tracked") else None)
        for k, shape in keys
    }


@pytest.mark.parametrize("name", DINO)
def test_full_size_layouts_load_strictly_from_zeros(name, tmp_path):
    sd = zero_state_dict(name)
    spec = get_spec(name)
    arch = resolve_arch(spec, {})
    assert list(official_layout(arch)) == list(sd)  # the official order, key by key
    assert identify(signature_of_state_dict(sd)) == [name]
    path = tmp_path / spec.weight_files[0]
    torch.save(sd, path)
    backbone = load_backbone(name, path)
    assert backbone.weights.source == "official"
    assert sum(p.numel() for p in backbone.model.parameters()) == spec.num_params
    missing = dict(sd)
    key = "blocks.3.mlp.fc1.bias" if spec.is_vit else "layer3.2.bn2.running_var"
    del missing[key]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=rf"missing key\(s\): {key}"):
        load_backbone(name, tmp_path / "missing.pth")


def test_a_dinov2_file_given_as_dino_names_its_architecture():
    keys = json.loads((FIXTURES / "keys" / "dinov2_vits14.json").read_text())
    dinov2 = {k: torch.empty(shape, device="meta") for k, shape in keys}
    arch = resolve_arch(get_spec("dino_vits16"), {})
    with pytest.raises(WeightsError, match=r"do not fit dino_vits16.*it fits dinov2_vits14"):
        check_weights_fit(arch, dinov2, Path("w.pth"), {})
    dino = {k: v.to("meta") for k, v in zero_state_dict("dino_vits8").items()}
    arch = resolve_arch(get_spec("dinov2_vits14"), {"img_size": 224})
    with pytest.raises(WeightsError, match=r"do not fit dinov2_vits14.*it fits dino_vits8"):
        check_weights_fit(arch, dino, Path("w.pth"), {})


def test_a_tiny_dinov2_file_given_as_dino_is_refused():
    tiny = FIXTURES / "tiny" / "dinov2_vits14_tiny.pth"
    with pytest.raises(WeightsError, match=r"do not fit dino_vits16.*the file has dinov2"):
        load_backbone("dino_vits16", tiny, embed_dim=64, depth=6, num_heads=2)


def test_official_file_names_tell_the_entries_apart(tmp_path):
    path = tmp_path / "dino_deitsmall8_pretrain.pth"
    torch.save(zero_state_dict("dino_vits8"), path)
    with pytest.raises(WeightsError, match="official weight file of dino_vits8, not dino_vits16"):
        load_backbone("dino_vits16", path)


def test_resnet50_gives_its_four_stages_and_their_averages():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = load_backbone("dino_resnet50", "random", layers="dpt")
    assert backbone.layers == (0, 1, 2, 3)
    assert backbone.out_channels == [256, 512, 1024, 2048] and backbone.strides == [4, 8, 16, 32]
    x = torch.randn(2, 3, 70, 90)
    pairs = backbone.forward_with_class_tokens(x)
    assert [tuple(m.shape) for m, _ in pairs] == [
        (2, 256, 24, 24),
        (2, 512, 12, 12),
        (2, 1024, 6, 6),
        (2, 2048, 3, 3),
    ]  # padded to 96 x 96
    for m, c in pairs:
        torch.testing.assert_close(c, m.mean((-2, -1)))
    model = build_timm_model(backbone.arch)  # the whole network: its pooled output
    model.load_state_dict(backbone.model.state_dict())
    padded = torch.nn.functional.pad(x, (0, 6, 0, 26))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(padded), pairs[-1][1], rtol=0, atol=1e-6)


def test_fit_runs_on_dino_vits8(tmp_path, capsys):
    """``densekit fit`` on a shared config with ``backbone: dino_vits8`` (random weights)."""
    from densekit.cli import main

    chips = TEST_DATA / "chips" / "seg"
    d, m = "--data.init_args.", "--model.init_args."
    argv = [
        "fit",
        "--config",
        str(REPO / "configs" / "segmentation_dpt.yaml"),
        m + "backbone",
        "dino_vits8",
        m + "weights",
        "random",
        m + "backbone_overrides",
        "{embed_dim: 32, depth: 4, num_heads: 2}",
        m + "layers",
        "dpt",
        m + "dpt_features",
        "16",
        m + "num_classes",
        "3",
        m + "class_names",
        "null",
        d + "images",
        str(chips / "images"),
        d + "labels",
        str(chips / "labels"),
        d + "label_map",
        "null",
        "--trainer.fast_dev_run",
        "true",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0, capsys.readouterr().err


@pytest.mark.parametrize("head", ["linear", "dpt"])
def test_heads_train_on_the_resnet_stages(head):
    """The ResNet's four stages feed the heads as the ConvNeXt stages do (DPT keeps their
    strides, the linear head resizes them to the finest)."""
    from densekit.tasks import SegmentationTask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = SegmentationTask(
            backbone="dino_resnet50",
            weights="random",
            layers="dpt",
            head=head,
            dpt_features=16,
            num_classes=3,
            scale=1 / 255,
        )
    x = torch.rand(2, 3, 70, 90) * 255
    y = task(x)
    assert y.shape == (2, 3, 70, 90)
    y.sum().backward()
    assert all(p.grad is None for p in task.model.backbone.parameters())
    assert all(p.grad is not None for p in task.model.head.parameters())
