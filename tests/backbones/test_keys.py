"""All 26 official state-dict layouts load strictly into their registry architectures.

The layouts (key, shape) come from Meta's hub constructors; each is turned into meta tensors,
checked against the registry entry, converted and loaded with strict=True into a model built on
the meta device (so the 7B model needs no memory).
"""

import json
from pathlib import Path

import pytest
import torch
from helpers import FIXTURES

from densekit.backbones.arch import build_timm_model, resolve_arch
from densekit.backbones.checkpoint import identify, signature_of_state_dict
from densekit.backbones.layout import official_layout
from densekit.backbones.load import (
    check_weights_fit,
    checkpoint_img_size,
    load_official_state_dict,
)
from densekit.backbones.registry import REGISTRY, get_spec

LAYOUTS = sorted(p.stem for p in (FIXTURES / "keys").glob("*.json") if p.stem != "_summary")


def meta_state_dict(name: str) -> dict[str, torch.Tensor]:
    keys = json.loads((FIXTURES / "keys" / f"{name}.json").read_text())
    return {k: torch.empty(shape, device="meta") for k, shape in keys}


def test_every_official_layout_is_in_the_registry():
    assert len(LAYOUTS) == 26
    # RAD-DINO and densekit's own bundled ViT are not Meta releases
    assert set(LAYOUTS) == set(REGISTRY) - {"rad_dino", "densekit_vitt16"}


@pytest.mark.parametrize("name", LAYOUTS)
def test_official_layout_loads_strictly(name):
    sd = meta_state_dict(name)
    spec = get_spec(name)
    overrides = {}
    if spec.has_pos_embed:
        overrides["img_size"] = checkpoint_img_size(sd, spec, Path(name))
        assert overrides["img_size"] == (518 if spec.family == "dinov2" else 224)
    arch = resolve_arch(spec, overrides)
    check_weights_fit(arch, sd, Path(f"{name}.pth"), {})
    model = build_timm_model(arch, device="meta")
    load_official_state_dict(model, arch, sd, name)
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("name", LAYOUTS)
def test_registry_parameter_count_matches_official(name):
    keys = json.loads((FIXTURES / "keys" / f"{name}.json").read_text())
    numel = {k: torch.Size(s).numel() for k, s in keys}
    # buffers, not parameters: DINOv3's masks and periods, the ResNet's batch-norm statistics
    buffers = [
        k
        for k in numel
        if k.endswith(
            ("bias_mask", "periods", "running_mean", "running_var", "num_batches_tracked")
        )
    ]
    # ConvNeXt stores its final norm twice (norm.* and norms.3.*): count it once.
    unique = sum(v for k, v in numel.items() if k not in buffers and not k.startswith("norms."))
    assert unique == REGISTRY[name].num_params
    summary = json.loads((FIXTURES / "keys" / "_summary.json").read_text())
    if name in summary:  # Meta's own count (the DINO layouts have none in the summary)
        assert unique == summary[name]["num_parameters_unique"]


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_identifies_its_architecture(name):
    owners = identify(signature_of_state_dict(meta_state_dict(name)))
    assert name in owners
    # Layouts shared by two entries: 7B web/SAT (the file name tells them apart) and DINOv2
    # ViT-B/14 / RAD-DINO (a continued-training of it).
    shared = {"dinov3_vit7b16", "dinov3_vit7b16_sat493m", "dinov2_vitb14"}
    assert len(owners) == (2 if name in shared else 1), owners


@pytest.mark.parametrize("name", LAYOUTS)
def test_generated_layout_is_the_official_one(name):
    """densekit's own layout rule reproduces Meta's key list, in Meta's order."""
    keys = json.loads((FIXTURES / "keys" / f"{name}.json").read_text())
    spec = get_spec(name)
    arch = resolve_arch(spec, {"img_size": 518} if spec.family == "dinov2" else {})
    layout = official_layout(arch)
    assert list(layout.items()) == [(k, tuple(s)) for k, s in keys]


def test_hf_files_need_no_local_cls_norm():
    """HF SAT files lack local_cls_norm (unused in eval); official files must have it."""
    sd = meta_state_dict("dinov3_vitl16_sat493m")
    sd = {k: v for k, v in sd.items() if not k.startswith("local_cls_norm.")}
    arch = resolve_arch(get_spec("dinov3_vitl16_sat493m"), {})
    check_weights_fit(arch, sd, Path("hf-folder"), {}, from_hf=True)
    with pytest.raises(Exception, match=r"it fits dinov3_vitl16\b"):
        check_weights_fit(arch, sd, Path("file.pth"), {})
