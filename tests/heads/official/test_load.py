"""Loading Meta's head files: full-size layouts, kinds told apart, every bad file refused by name."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from helpers import TEST_DATA
from official_heads import head_fixture_names, needs_head_fixtures, tiny_head

from densekit import list_official_heads, load_official_head
from densekit.backbones import WeightsInfo
from densekit.errors import DensekitError, UnknownNameError, WeightsError
from densekit.heads.official import KINDS, get_released_head, official_head
from densekit.heads.official.layout import strip_prefix

KEYS = TEST_DATA / "dino_heads" / "keys"

# the released head each full-size layout stands for (backbone and defaults)
LAYOUTS = {
    "dinov3_vitl16_chmv2_dpt_head": "dinov3_vitl16_chmv2",
    "dinov3_vit7b16_synthmix_dpt_head": "dinov3_vit7b16_dd",
    **{
        f"dinov2_vit{s}14_{h}_depth_head": f"dinov2_vit{s}14_nyu_{h}"
        for s in "sblg"
        for h in ("linear", "linear4", "dpt")
    },
}
DEFAULT_LAYERS = {
    "dinov3_vitl16_chmv2": (5, 11, 17, 23),
    "dinov3_vit7b16_dd": (9, 19, 29, 39),
    "dinov2_vits14_nyu_linear": (11,),
    "dinov2_vits14_nyu_linear4": (2, 5, 8, 11),
    "dinov2_vitb14_nyu_dpt": (2, 5, 8, 11),
    "dinov2_vitl14_nyu_linear4": (4, 11, 17, 23),
    "dinov2_vitg14_nyu_dpt": (9, 19, 29, 39),
    "dinov2_vitg14_nyu_linear": (39,),
}


def meta_layout(name: str) -> dict[str, torch.Tensor]:
    keys = json.loads((KEYS / f"{name}.json").read_text())
    return {k: torch.empty(shape, device="meta") for k, shape in keys}


def load_layout(name: str, kind: str | None = None, **kwargs):
    released = get_released_head(LAYOUTS[name])
    sd = strip_prefix(meta_layout(name), Path(name))
    info = WeightsInfo(source="official", path=None)
    with torch.device("meta"):
        return official_head(
            kind or released.name, sd, name, released.backbone, None, None, info, **kwargs
        )


def test_every_layout_is_covered():
    assert sorted(p.stem for p in KEYS.glob("*.json")) == sorted(LAYOUTS)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_full_size_layout_loads_strictly_as_its_released_head(name):
    released = get_released_head(LAYOUTS[name])
    head = load_layout(name)
    assert head.kind == released.kind
    assert head.depth_range == released.depth_range
    assert head.layers == released.layers
    if released.name in DEFAULT_LAYERS:
        assert head.layers == DEFAULT_LAYERS[released.name]
    # every tensor of the file has its place, and nothing else is in the head
    ours = {k: tuple(v.shape) for k, v in head.official_state_dict().items()}
    assert ours == {k: tuple(s) for k, s in json.loads((KEYS / f"{name}.json").read_text())}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_a_file_given_as_another_kind_names_the_kind_it_looks_like(name):
    found = get_released_head(LAYOUTS[name]).kind
    for kind in KINDS:
        if kind == found or KINDS[kind].family != KINDS[found].family:
            continue
        with pytest.raises(WeightsError, match=f"looks like a {found} head.*kind='{found}'"):
            load_layout(name, kind=kind)


def test_a_dinov2_file_given_to_a_dinov3_backbone_is_refused():
    sd = strip_prefix(meta_layout("dinov2_vits14_dpt_depth_head"), Path("x"))
    match = "dinov2 ViT; dinov3_vits16 is a dinov3 backbone"
    with pytest.raises(DensekitError, match=match), torch.device("meta"):
        official_head(
            "dinov2_dpt_depth", sd, "x", "dinov3_vits16", None, (0.001, 10.0), WeightsInfo("x")
        )


def test_a_head_of_another_width_names_both_widths():
    sd = strip_prefix(meta_layout("dinov2_vitb14_dpt_depth_head"), Path("x"))
    match = "width 768, dinov2_vits14 gives 384"
    with pytest.raises(WeightsError, match=match), torch.device("meta"):
        official_head(
            "dinov2_dpt_depth", sd, "x", "dinov2_vits14", None, (0.001, 10.0), WeightsInfo("x")
        )


def test_released_table_and_aliases():
    heads = {h.name: h for h in list_official_heads()}
    assert heads["dinov3_vitl16_chmv2"].backbone == "dinov3_vitl16_sat493m"
    assert heads["dinov3_vitl16_chmv2"].licence == "DINOv3 License"
    assert heads["dinov2_vits14_nyu_dpt"].licence == "Apache-2.0"
    assert get_released_head("dinov2_vits14_ld").name == "dinov2_vits14_nyu_linear4"
    assert get_released_head("dinov2_vitg14_dd").name == "dinov2_vitg14_nyu_dpt"
    # the hub builds linear heads with bins on 0.001-80 m, NYU included; DPT heads by data set
    assert heads["dinov2_vits14_nyu_linear"].depth_range == (0.001, 80.0)
    assert heads["dinov2_vits14_nyu_dpt"].depth_range == (0.001, 10.0)
    assert heads["dinov2_vits14_kitti_dpt"].depth_range == (0.001, 80.0)
    with pytest.raises(UnknownNameError, match="valid names: dinov3_vitl16_chmv2"):
        get_released_head("dinov3_vitl16_canopy")


# -- real files: the tiny fixtures, damaged ------------------------------------------------
@pytest.fixture
def chmv2():
    needs_head_fixtures()
    return tiny_head("dinov3_vits16_tiny_chmv2_dpt_head_tiny")


def save(tmp_path: Path, obj, name: str = "head.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_missing_unexpected_and_misshaped_keys_are_named(chmv2, tmp_path):
    sd = torch.load(chmv2.path, weights_only=True)
    key = "fusion_blocks.2.res_conv_unit1.conv1.conv.weight"
    missing = {k: v for k, v in sd.items() if k != key}
    with pytest.raises(WeightsError, match=f"missing.*{key}"):
        load_official_head(
            chmv2.kind,
            save(tmp_path, missing),
            chmv2.backbone,
            chmv2.backbone_weights,
            layers=chmv2.layers,
            **chmv2.overrides,
        )
    extra = {**sd, "fusion_blocks.9.extra.weight": torch.zeros(3)}
    with pytest.raises(WeightsError, match=r"unexpected.*fusion_blocks\.9\.extra\.weight"):
        load_official_head(
            chmv2.kind,
            save(tmp_path, extra),
            chmv2.backbone,
            chmv2.backbone_weights,
            layers=chmv2.layers,
            **chmv2.overrides,
        )
    shaped = {**sd, key: torch.zeros(3, 3, 3, 3)}
    with pytest.raises(
        WeightsError, match=rf"mis-shaped.*{key} \[3, 3, 3, 3\] \(expected \[32, 32, 3, 3\]\)"
    ):
        load_official_head(
            chmv2.kind,
            save(tmp_path, shaped),
            chmv2.backbone,
            chmv2.backbone_weights,
            layers=chmv2.layers,
            **chmv2.overrides,
        )


def test_wrapped_dinov2_files_and_other_kinds(tmp_path):
    needs_head_fixtures()
    dpt = tiny_head("dinov2_vits14_tiny_nyu_dpt_head_tiny")
    raw = torch.load(dpt.path, weights_only=True)
    assert set(raw) == {"state_dict"}  # the released wrapping, accepted as it is
    head = dpt.load()
    assert head.kind == "dinov2_dpt_depth"
    with pytest.raises(WeightsError, match="looks like a dinov2_dpt_depth head"):
        load_official_head(
            "dinov2_linear_depth",
            dpt.path,
            dpt.backbone,
            dpt.backbone_weights,
            depth_range=(0.001, 10.0),
            **dpt.overrides,
        )
    linear = tiny_head("dinov2_vits14_tiny_kitti_linear_head_tiny")
    with pytest.raises(WeightsError, match="looks like a dinov2_linear_depth head"):
        load_official_head(
            "dinov2_dpt_depth",
            linear.path,
            linear.backbone,
            linear.backbone_weights,
            depth_range=(0.001, 10.0),
            **linear.overrides,
        )


def test_bad_files_and_arguments_are_refused_by_name(chmv2, tmp_path):
    args = (chmv2.backbone, chmv2.backbone_weights)
    kw = {"layers": chmv2.layers, **chmv2.overrides}
    with pytest.raises(WeightsError, match="no such file"):
        load_official_head(chmv2.kind, tmp_path / "none.pth", *args, **kw)
    code = tmp_path / "code.pth"
    code.write_bytes(pickle.dumps(print))  # a pickle that would run code
    with pytest.raises(WeightsError, match="weights_only=True"):
        load_official_head(chmv2.kind, code, *args, **kw)
    with pytest.raises(WeightsError, match="holds a backbone"):  # backbone file as the head
        load_official_head(chmv2.kind, chmv2.backbone_weights, *args, **kw)
    with pytest.raises(UnknownNameError, match="valid kinds: dinov3_chmv2"):
        load_official_head("chmv2", chmv2.path, *args, **kw)
    with pytest.raises(DensekitError, match="takes 4 distinct layer"):
        load_official_head(chmv2.kind, chmv2.path, *args, **{**kw, "layers": [1, 2, 3]})
    with pytest.raises(DensekitError, match="out of range"):
        load_official_head(chmv2.kind, chmv2.path, *args, **{**kw, "layers": [1, 2, 3, 40]})
    with pytest.raises(DensekitError, match="0 < min < max"):
        load_official_head(chmv2.kind, chmv2.path, *args, depth_range=(5.0, 1.0), **kw)


def test_dinov2_dpt_range_comes_from_the_name_or_must_be_given(tmp_path):
    needs_head_fixtures()
    dpt = tiny_head("dinov2_vits14_tiny_nyu_dpt_head_tiny")
    plain = tmp_path / "head.pth"
    plain.write_bytes(dpt.path.read_bytes())
    kw = {"layers": dpt.layers, **dpt.overrides}
    with pytest.raises(DensekitError, match=r"does not say it .*depth_range"):
        load_official_head("dinov2_dpt_depth", plain, dpt.backbone, dpt.backbone_weights, **kw)
    named = tmp_path / "dinov2_vits14_kitti_dpt_head.pth"
    named.write_bytes(dpt.path.read_bytes())
    head = load_official_head("dinov2_dpt_depth", named, dpt.backbone, dpt.backbone_weights, **kw)
    assert head.depth_range == (0.001, 80.0)


@pytest.mark.parametrize("name", head_fixture_names())
def test_head_round_trips_to_meta_layout(name):
    needs_head_fixtures()
    fixture = tiny_head(name)
    head = fixture.load()
    sd = torch.load(fixture.path, weights_only=True)
    sd = sd.get("state_dict", sd)
    ours = head.official_state_dict()
    assert ours.keys() == sd.keys()
    assert all(torch.equal(ours[k], sd[k]) for k in sd)
