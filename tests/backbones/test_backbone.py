"""Shared behaviour of every backbone: frozen, any input size, the layers it was asked for."""

import pytest
import torch
from helpers import TINY_DIMS, load_tiny

from densekit import load_backbone
from densekit.backbones import crop_to_image, pad_to_multiple
from densekit.errors import DensekitError, InputImageError

CONVNEXT_TINY = {"dims": (8, 16, 24, 32), "depths": (1, 1, 2, 1)}


def random_backbone(name: str, **kwargs):
    with pytest.warns(UserWarning, match="RANDOM"):
        overrides = CONVNEXT_TINY if "convnext" in name else TINY_DIMS
        return load_backbone(name, "random", **overrides, **kwargs)


@pytest.fixture(params=["dinov2_vits14_tiny", "dinov3_vits16_tiny", "convnext"])
def backbone(request):
    if request.param == "convnext":
        return random_backbone("dinov3_convnext_tiny", layers=[0, 1, 2, 3])
    return load_tiny(request.param)


def test_frozen(backbone):
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not backbone.training
    backbone.train()
    assert not backbone.training and not backbone.model.training
    assert all(not m.training for m in backbone.modules())


@pytest.mark.parametrize(("h", "w"), [(32, 32), (33, 47), (65, 40), (100, 129)])
def test_any_size_is_padded_to_the_patch_grid(backbone, h, w):
    x = torch.randn(2, 3, h, w)
    maps = backbone(x)
    assert len(maps) == len(backbone.layers)
    p = backbone.patch_size
    hp, wp = h + (-h % p), w + (-w % p)
    for m, c, s in zip(maps, backbone.out_channels, backbone.strides, strict=True):
        assert m.shape == (2, c, hp // s, wp // s)
        assert m.dtype == torch.float32 and torch.isfinite(m).all()


def test_features_train_a_head_without_touching_the_backbone(backbone):
    maps = backbone(torch.randn(2, 3, 40, 40))
    head = torch.nn.Conv2d(maps[-1].shape[1], 2, 1)
    loss = head(maps[-1]).square().mean()
    loss.backward()
    assert head.weight.grad is not None
    assert all(p.grad is None for p in backbone.parameters())


def test_smaller_than_a_patch_is_an_error(backbone):
    with pytest.raises(InputImageError, match=r"smaller than one patch"):
        backbone(torch.randn(1, 3, backbone.patch_size - 1, 64))


def test_wrong_channel_count_is_an_error(backbone):
    with pytest.raises(InputImageError, match=r"input has 4 channels, the backbone takes 3"):
        backbone(torch.randn(1, 4, 64, 64))


def test_padding_is_bottom_right_and_crop_undoes_it():
    x = torch.randn(1, 3, 15, 30)
    padded = pad_to_multiple(x, 14)
    assert padded.shape == (1, 3, 28, 42)
    assert torch.equal(crop_to_image(padded, (15, 30)), x)
    assert padded[..., 15:, :].abs().sum() == 0 and padded[..., :, 30:].abs().sum() == 0


def test_unpadded_input_to_get_intermediate_layers_names_the_padded_size():
    bb = load_tiny("dinov2_vits14_tiny")
    with pytest.raises(InputImageError, match=r"30x45 is not a multiple.*pad it to 42x56"):
        bb.get_intermediate_layers(torch.randn(1, 3, 30, 45))


def test_layer_sets():
    bb = load_tiny("dinov2_vits14_tiny", layers="last")
    assert bb.layers == (5,)
    assert load_tiny("dinov2_vits14_tiny", layers="last4").layers == (2, 3, 4, 5)
    # overridden depth 6: evenly spaced, ending at the last block
    assert load_tiny("dinov2_vits14_tiny", layers="dpt").layers == (0, 2, 3, 5)
    assert load_tiny("dinov2_vits14_tiny", layers=[1, -1]).layers == (1, 5)
    with pytest.raises(DensekitError, match=r"out of range 0..5"):
        load_tiny("dinov2_vits14_tiny", layers=[6])
    # block order and no repeats, as Meta's get_intermediate_layers returns them
    assert load_tiny("dinov2_vits14_tiny", layers=[5, 2, 5]).layers == (2, 5)
    bb = load_tiny("dinov2_vits14_tiny")
    x = torch.randn(1, 3, 28, 28)
    a = bb.get_intermediate_layers(x, n=[5, 2])
    b = bb.get_intermediate_layers(x, n=[2, 5])
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_registry_dpt_layers_of_official_sizes():
    from densekit.backbones.registry import REGISTRY

    assert REGISTRY["dinov2_vits14"].layer_set("dpt") == (2, 5, 8, 11)
    assert REGISTRY["dinov2_vitl14"].layer_set("dpt") == (4, 11, 17, 23)
    assert REGISTRY["dinov2_vitg14"].layer_set("dpt") == (9, 19, 29, 39)
    assert REGISTRY["dinov3_vitl16"].layer_set("last4") == (20, 21, 22, 23)


def test_bf16_autocast_is_close_to_fp32():
    fp32 = load_tiny("dinov3_vits16_tiny")
    bf16 = load_tiny("dinov3_vits16_tiny", autocast_dtype=torch.bfloat16)
    x = torch.randn(1, 3, 64, 64)
    a, b = fp32(x)[-1], bf16(x)[-1]
    assert b.dtype == torch.float32
    assert not torch.equal(a, b)  # it did run in bf16
    rel = (a - b).norm() / a.norm()
    assert rel < 0.05, rel


def test_inference_mode_outputs_stay_inference_tensors_inside_inference_mode():
    bb = load_tiny("dinov2_vits14_tiny")
    with torch.inference_mode():
        maps = bb(torch.randn(1, 3, 28, 28))
    assert maps[0].is_inference()
    assert not bb(torch.randn(1, 3, 28, 28))[0].is_inference()


def test_convnext_follows_official_semantics():
    """Stage strides 4..32; the last stage's class token is LayerNorm(global average)."""
    bb = random_backbone("dinov3_convnext_tiny", layers=[0, 1, 2, 3])
    assert bb.strides == [4, 8, 16, 32] and bb.out_channels == [8, 16, 24, 32]
    x = torch.randn(2, 3, 64, 96)
    ((p3, c3),) = bb.get_intermediate_layers(x, n=1, reshape=True, return_class_token=True)
    timm_pooled = bb.model.forward_head(bb.model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(c3, timm_pooled)
    assert p3.shape == (2, 32, 2, 3)
    # Earlier stages are not normalised; their class token is the plain average.
    ((p0, c0),) = bb.get_intermediate_layers(x, n=[0], reshape=True, return_class_token=True)
    torch.testing.assert_close(c0, p0.mean((-2, -1)))
    # norm=True normalises each position of the last map over channels (LayerNorm2d)
    (raw3,) = bb.get_intermediate_layers(x, n=1, reshape=True, norm=False)
    torch.testing.assert_close(p3, bb.model.head.norm(raw3))


def test_in_chans_adapter_is_explicit():
    bb = load_tiny("dinov2_vits14_tiny", in_chans=13)
    assert bb.in_chans == 13 and bb.normalization is None
    assert not any(p.requires_grad for p in bb.parameters())
    assert bb(torch.randn(1, 13, 28, 28))[0].shape == (1, 64, 2, 2)
    # timm's rule (RGB kernels repeated, scaled by 3/N): with N = 6, an RGB image given twice
    # yields the RGB model's output
    six = load_tiny("dinov2_vits14_tiny", in_chans=6)
    rgb = load_tiny("dinov2_vits14_tiny")
    x = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(six(torch.cat([x, x], 1))[-1], rgb(x)[-1], atol=1e-4, rtol=1e-4)
