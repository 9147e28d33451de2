"""Hugging Face checkpoints (folders written by transformers itself) load into the same models.

Each test builds a tiny transformers model with perturbed random weights, saves it with
``save_pretrained`` (the on-disk naming of real hub files such as microsoft/rad-dino), loads the
folder with densekit and compares with transformers' own forward.
"""

import json

import pytest
import torch
from helpers import TINY_DIMS

from densekit import load_backbone
from densekit.errors import WeightsError

transformers = pytest.importorskip("transformers")  # part of the dev extra: runs in CI


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = 0.5 if p.ndim < 2 or "token" in str(p.shape) else p.shape[-1] ** -0.5
            p.add_(torch.randn(p.shape, generator=g) * scale * (0.2 if p.ndim < 2 else 1))


def hf_dinov2(tmp_path, registers: int = 0, swiglu: bool = False):
    cls_cfg = transformers.Dinov2WithRegistersConfig if registers else transformers.Dinov2Config
    cls_model = transformers.Dinov2WithRegistersModel if registers else transformers.Dinov2Model
    kwargs = {"num_register_tokens": registers} if registers else {}
    cfg = cls_cfg(
        hidden_size=64,
        num_hidden_layers=6,
        num_attention_heads=2,
        mlp_ratio=4,
        image_size=112,
        patch_size=14,
        layerscale_value=1.0,
        use_swiglu_ffn=swiglu,
        **kwargs,
    )
    torch.manual_seed(0)
    model = cls_model(cfg).eval()
    perturb(model)
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def hf_dinov3(tmp_path, gated: bool = False):
    cfg = transformers.DINOv3ViTConfig(
        hidden_size=64,
        num_hidden_layers=6,
        num_attention_heads=2,
        intermediate_size=256,
        use_gated_mlp=gated,
        hidden_act="silu" if gated else "gelu",
        num_register_tokens=4,
        patch_size=16,
        layerscale_value=1.0,
        rope_theta=100.0,
    )
    torch.manual_seed(0)
    model = transformers.DINOv3ViTModel(cfg).eval()
    perturb(model)
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def compare(ours, theirs_last_hidden: torch.Tensor, x: torch.Tensor, prefix: int) -> float:
    ((patch, cls, extra),) = ours.get_intermediate_layers(
        x, n=1, return_class_token=True, return_extra_tokens=True
    )
    tokens = torch.cat([cls[:, None], extra, patch], 1)
    assert tokens.shape == theirs_last_hidden.shape
    return (tokens - theirs_last_hidden).abs().max().item()


@pytest.mark.parametrize(
    ("name", "registers", "swiglu"),
    [
        ("dinov2_vits14", 0, False),
        ("dinov2_vits14_reg4", 4, False),
        ("dinov2_vitg14_reg4", 4, True),
    ],
)
def test_hf_dinov2_folder_matches_transformers_at_native_size(tmp_path, name, registers, swiglu):
    model, folder = hf_dinov2(tmp_path, registers, swiglu)
    ratio = {"mlp_ratio": 4}
    ours = load_backbone(name, folder, **TINY_DIMS, **ratio)
    assert ours.weights.source == "hf" and ours.weights.path.endswith("model.safetensors")
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        theirs = model(pixel_values=x).last_hidden_state
    assert compare(ours, theirs, x, 1 + registers) < 1e-5


def test_hf_dinov2_non_native_size_follows_official_semantics(tmp_path):
    """transformers resizes DINOv2 pos-embeds by size; Meta's code (and densekit) use a 0.1
    offset and scale_factor. They agree on the native grid and differ elsewhere."""
    model, folder = hf_dinov2(tmp_path)
    ours = load_backbone("dinov2_vits14", folder, **TINY_DIMS, mlp_ratio=4)
    x = torch.randn(1, 3, 70, 98)
    with torch.no_grad():
        theirs = model(pixel_values=x).last_hidden_state
    assert compare(ours, theirs, x, 1) > 1e-3
    # the same tensors loaded from an official-layout file give densekit's HF result exactly
    from densekit.backbones.hf import read_hf_folder

    sd, _ = read_hf_folder(folder)
    torch.save(sd, tmp_path / "official.pth")
    official = load_backbone("dinov2_vits14", tmp_path / "official.pth", **TINY_DIMS, mlp_ratio=4)
    torch.testing.assert_close(ours(x)[-1], official(x)[-1], rtol=0, atol=0)


@pytest.mark.parametrize(("name", "gated"), [("dinov3_vits16", False), ("dinov3_vits16plus", True)])
@pytest.mark.parametrize("size", [(112, 112), (80, 112), (176, 144)])
def test_hf_dinov3_folder_matches_transformers(tmp_path, name, gated, size):
    model, folder = hf_dinov3(tmp_path, gated)
    ours = load_backbone(name, folder, **TINY_DIMS, ffn_ratio=6 if gated else 4)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        theirs = model(pixel_values=x).last_hidden_state
    assert compare(ours, theirs, x, 5) < 1e-5


def test_transformers5_key_names_are_accepted(tmp_path):
    """Renamed keys (attention.q_proj, model.layer.N) convert like the original ones."""
    from safetensors.torch import load_file, save_file

    model, folder = hf_dinov2(tmp_path)
    sd = load_file(folder / "model.safetensors")
    renamed = {
        k.replace("attention.attention.query", "attention.q_proj")
        .replace("attention.attention.key", "attention.k_proj")
        .replace("attention.attention.value", "attention.v_proj")
        .replace("attention.output.dense", "attention.o_proj"): v
        for k, v in sd.items()
    }
    save_file(renamed, folder / "model.safetensors")
    ours = load_backbone("dinov2_vits14", folder, **TINY_DIMS, mlp_ratio=4)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        theirs = model(pixel_values=x).last_hidden_state
    assert compare(ours, theirs, x, 1) < 1e-5


def test_bare_safetensors_file(tmp_path):
    model, folder = hf_dinov2(tmp_path)
    bare = tmp_path / "weights.safetensors"
    (folder / "model.safetensors").rename(bare)
    ours = load_backbone("dinov2_vits14", bare, **TINY_DIMS, mlp_ratio=4)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        theirs = model(pixel_values=x).last_hidden_state
    assert compare(ours, theirs, x, 1) < 1e-5


def test_preprocessor_statistics_of_the_folder_are_used(tmp_path):
    _, folder = hf_dinov2(tmp_path)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]})
    )
    ours = load_backbone("rad_dino", folder, **TINY_DIMS, mlp_ratio=4)
    assert ours.normalization.mean == (0.5, 0.5, 0.5)
    assert ours.normalization.std == (0.25, 0.25, 0.25)
    assert ours.normalization.bands == ("grey", "grey", "grey")


def test_folder_of_another_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(WeightsError, match=r"model_type 'vit' is not a DINO ViT"):
        load_backbone("dinov2_vits14", tmp_path)


def test_hf_dinov3_without_config_is_an_error(tmp_path):
    _, folder = hf_dinov3(tmp_path)
    bare = tmp_path / "w.safetensors"
    (folder / "model.safetensors").rename(bare)
    with pytest.raises(WeightsError, match=r"needs its config.json"):
        load_backbone("dinov3_vits16", bare, **TINY_DIMS, ffn_ratio=4)


def test_hf_dinov3_with_another_activation_is_refused(tmp_path):
    _, folder = hf_dinov3(tmp_path, gated=True)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_act"] = "gelu"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=r"hidden_act 'gelu'.*use silu"):
        load_backbone("dinov3_vits16plus", folder, **TINY_DIMS, ffn_ratio=6)


def test_hf_head_count_must_match(tmp_path):
    _, folder = hf_dinov2(tmp_path)
    with pytest.raises(WeightsError, match=r"num_attention_heads 2, dinov2_vits14 as built has 4"):
        load_backbone("dinov2_vits14", folder, embed_dim=64, depth=6, num_heads=4, mlp_ratio=4)
