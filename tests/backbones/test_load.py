"""Loading is strict and every bad input gets an error that names what is wrong."""

import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from helpers import FIXTURES, TINY_DIMS, load_tiny, tiny_overrides

from densekit import load_backbone
from densekit.backbones import registry
from densekit.errors import DensekitError, UnknownNameError, WeightsError

TINY_V2 = FIXTURES / "tiny" / "dinov2_vits14_tiny.pth"
TINY_V3 = FIXTURES / "tiny" / "dinov3_vits16_tiny.pth"


def official_size_file(tmp_path: Path, layout: str, filename: str | None = None) -> Path:
    """A file with an official layout at full size but almost no storage (stride-0 tensors)."""
    keys = json.loads((FIXTURES / "keys" / f"{layout}.json").read_text())
    sd = {k: torch.zeros(1).expand(*shape) if shape else torch.zeros(()) for k, shape in keys}
    path = tmp_path / (filename or f"{layout}.pth")
    torch.save(sd, path)
    return path


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError, match=r"unknown backbone 'dinov2_vitx14'.*dinov2_vits14"):
        load_backbone("dinov2_vitx14", weights="random")


def test_hub_alias_is_accepted():
    bb = load_backbone(
        "dinov2_vits14_reg",
        TINY_V2.parent / "dinov2_vits14_reg4_tiny.pth",
        **tiny_overrides("dinov2_vits14_reg4_tiny"),
    )
    assert bb.name == "dinov2_vits14_reg4"


def test_weights_are_required():
    with pytest.raises(TypeError):
        load_backbone("dinov2_vits14")  # type: ignore[call-arg]


def test_missing_weights_path(tmp_path):
    missing = tmp_path / "nope" / "dinov2_vits14_pretrain.pth"
    with pytest.raises(WeightsError, match=r"no such file or folder.*'random'"):
        load_backbone("dinov2_vits14", missing)


def test_random_weights_warn():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        bb = load_backbone("dinov2_vits14", "random", **TINY_DIMS)
    assert bb.weights.source == "random" and bb.weights.sha256 is None


def test_weights_of_another_architecture_name_the_owner(tmp_path):
    path = official_size_file(tmp_path, "dinov3_vits16", "weights.pth")
    with pytest.raises(WeightsError, match=r"do not fit dinov2_vits14.*it fits dinov3_vits16"):
        load_backbone("dinov2_vits14", path)


def test_tiny_weights_with_wrong_overrides(tmp_path):
    with pytest.raises(WeightsError, match=r"embed_dim 384.*embed_dim 64.*overrides"):
        load_backbone("dinov2_vits14", TINY_V2)  # official size requested, tiny file given


def test_official_file_name_of_another_entry(tmp_path):
    path = official_size_file(
        tmp_path, "dinov3_vitl16_sat493m", "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth"
    )
    with pytest.raises(WeightsError, match=r"official weight file of dinov3_vitl16_sat493m"):
        load_backbone("dinov3_vitl16", path)


def test_sat_layout_under_web_name_is_refused(tmp_path):
    # local_cls_norm.* only exists in the SAT ViT-L file, whatever its name
    path = official_size_file(tmp_path, "dinov3_vitl16_sat493m", "renamed.pth")
    with pytest.raises(WeightsError, match=r"it fits dinov3_vitl16_sat493m"):
        load_backbone("dinov3_vitl16", path)


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(WeightsError, match=r"notes.pth: (not a readable|refused)"):
        load_backbone("dinov2_vits14", path)


class _Exploit:
    """Unpickling this would run code (create a marker file)."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_with_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "code_ran"
    exploit = _Exploit()
    exploit.marker = str(marker)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"cls_token": exploit}, f, protocol=2)
    with pytest.raises(
        WeightsError, match=r"evil.pth: refused: it contains executable objects.*weights_only=True"
    ):
        load_backbone("dinov2_vits14", path)
    assert not marker.exists()
    with open(path, "wb") as f:  # protocol 4: the safe unpickler stops even earlier
        pickle.dump({"cls_token": exploit}, f, protocol=4)
    with (
        pytest.warns(UserWarning, match="pickle protocol 4"),
        pytest.raises(WeightsError, match=r"evil.pth: not a readable PyTorch checkpoint"),
    ):
        load_backbone("dinov2_vits14", path)
    assert not marker.exists()
    torch.save({"model": exploit}, tmp_path / "evil2.pth")
    with pytest.raises(WeightsError, match="refused: it contains executable objects"):
        load_backbone("dinov2_vits14", tmp_path / "evil2.pth")
    assert not marker.exists()


def test_pickle_that_is_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match=r"holds a list, not a state dict"):
        load_backbone("dinov2_vits14", tmp_path / "list.pth")
    sd = torch.load(TINY_V2, weights_only=True)
    torch.save({"teacher": sd, "epoch": 3}, tmp_path / "train.pth")
    with pytest.raises(WeightsError, match=r"not a flat state dict.*training checkpoint"):
        load_backbone(
            "dinov2_vits14", tmp_path / "train.pth", **tiny_overrides("dinov2_vits14_tiny")
        )


def test_missing_and_unexpected_keys_fail(tmp_path):
    sd = torch.load(TINY_V2, weights_only=True)
    del sd["blocks.3.mlp.fc2.bias"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"blocks.3.mlp.fc2.bias"):
        load_backbone(
            "dinov2_vits14", tmp_path / "missing.pth", **tiny_overrides("dinov2_vits14_tiny")
        )
    sd = torch.load(TINY_V2, weights_only=True)
    sd["blocks.0.extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"blocks.0.extra.weight"):
        load_backbone(
            "dinov2_vits14", tmp_path / "extra.pth", **tiny_overrides("dinov2_vits14_tiny")
        )


def test_misshaped_key_fails(tmp_path):
    sd = torch.load(TINY_V2, weights_only=True)
    sd["blocks.2.attn.proj.weight"] = sd["blocks.2.attn.proj.weight"][:, :32]
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(
        WeightsError,
        match=r"mis-shaped key\(s\): blocks.2.attn.proj.weight \[64, 32\] \(expected \[64, 64\]\)",
    ):
        load_backbone(
            "dinov2_vits14", tmp_path / "shape.pth", **tiny_overrides("dinov2_vits14_tiny")
        )


def test_unmasked_k_bias_is_refused(tmp_path):
    sd = torch.load(TINY_V3, weights_only=True)
    sd["blocks.1.attn.qkv.bias_mask"] = torch.ones_like(sd["blocks.1.attn.qkv.bias_mask"])
    torch.save(sd, tmp_path / "bias.pth")
    with pytest.raises(WeightsError, match=r"blocks.1.attn.qkv.bias_mask is not"):
        load_backbone(
            "dinov3_vits16", tmp_path / "bias.pth", **tiny_overrides("dinov3_vits16_tiny")
        )


def test_a_conversion_that_drops_values_is_refused(monkeypatch):
    """timm's non-qkvb DINOv3 model silently drops the q/v biases; the loader notices."""
    spec = registry.REGISTRY["dinov3_vits16"]
    broken = registry.BackboneSpec(**{**spec.__dict__, "timm_name": "vit_small_patch16_dinov3"})
    monkeypatch.setitem(registry.REGISTRY, "dinov3_vits16", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(WeightsError, match=r"would drop \d+ values.*refusing a partial load"):
            load_backbone("dinov3_vits16", TINY_V3, **tiny_overrides("dinov3_vits16_tiny"))


def test_unknown_override():
    with pytest.raises(DensekitError, match=r"unknown architecture override\(s\) \['mlp_ratio'\]"):
        load_backbone("dinov3_vits16", "random", mlp_ratio=4)


def test_img_size_that_would_resample_pos_embed():
    with pytest.raises(WeightsError, match=r"grid is 8x8 \(img_size 112\); img_size=84"):
        load_backbone("dinov2_vits14", TINY_V2, **tiny_overrides("dinov2_vits14_tiny"), img_size=84)


def test_unknown_layer_set():
    with pytest.raises(DensekitError, match=r"unknown layer set 'first'"):
        load_tiny("dinov2_vits14_tiny", layers="first")


def test_weights_provenance_and_sha256():
    bb = load_tiny("dinov2_vits14_tiny")
    manifest = json.loads((FIXTURES / "MANIFEST.json").read_text())
    assert bb.weights.sha256 == manifest["tiny/dinov2_vits14_tiny.pth"]["sha256"]
    assert bb.weights.source == "official"


@pytest.mark.parametrize(
    ("fixture", "key"),
    [
        ("dinov2_vits14_tiny", "mask_token"),
        ("dinov3_vits16_tiny", "mask_token"),
        ("dinov3_vits16_tiny", "rope_embed.periods"),
        ("dinov3_vits16_tiny", "blocks.4.attn.qkv.bias_mask"),
        ("dinov3_vit7b16_tiny", "local_cls_norm.weight"),
    ],
)
def test_keys_timm_has_no_place_for_are_still_required(tmp_path, fixture, key):
    """Tensors that timm's layout drops (unused in eval) must still be in an official file."""
    sd = torch.load(FIXTURES / "tiny" / f"{fixture}.pth", weights_only=True)
    del sd[key]
    torch.save(sd, tmp_path / "w.pth")
    name = "dinov2_vits14" if fixture.startswith("dinov2") else fixture.replace("_tiny", "")
    with pytest.raises(WeightsError, match=rf"missing key\(s\): {key.replace('.', '[.]')}"):
        load_backbone(name, tmp_path / "w.pth", **tiny_overrides(fixture))


def test_misshaped_rope_periods_are_named(tmp_path):
    sd = torch.load(TINY_V3, weights_only=True)
    sd["rope_embed.periods"] = torch.ones(5)
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match=r"rope_embed.periods \[5\] \(expected \[8\]\)"):
        load_backbone("dinov3_vits16", tmp_path / "w.pth", **tiny_overrides("dinov3_vits16_tiny"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"embed_dim": 64.5}, r"embed_dim=64.5: a positive integer is needed"),
        ({"num_heads": 0}, r"num_heads=0: a positive integer is needed"),
        ({"depth": -1}, r"depth=-1: a positive integer is needed"),
        ({"ffn_ratio": "4"}, r"ffn_ratio='4': a positive number is needed"),
        ({"embed_dim": 64, "num_heads": 3}, r"embed_dim 64 is not divisible by num_heads 3"),
    ],
)
def test_bad_override_values(overrides, message):
    with pytest.raises(DensekitError, match=message):
        load_backbone("dinov3_vits16", "random", **overrides)


def test_empty_weights_string():
    with pytest.raises(WeightsError, match="weights is empty"):
        load_backbone("dinov2_vits14", "")
