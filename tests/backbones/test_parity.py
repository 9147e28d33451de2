"""Parity with Meta's reference code on every tiny fixture and input size (atol 1e-5).

The expected tensors were produced by the official DINOv2/DINOv3 code (see
tests/data/dino_reference/README.md). Covered: DINOv2 without registers at non-native sizes
(official pos-embed interpolation with the 0.1 offset), with registers, ViT-g SwiGLU; DINOv3 with
qkv bias and masked k bias, bfloat16 RoPE periods, SwiGLU (align 8) and 7B (no qkv bias,
SwiGLU align 64, untied local cls norm).
"""

import pytest
import torch
from helpers import FIXTURES, TINY, load_tiny, tiny_inputs

ATOL = 1e-5
CASES = [
    (fixture, size)
    for fixture in TINY
    for size in torch.load(FIXTURES / "tiny" / f"{fixture}.expected.pt", weights_only=True)["sizes"]
]


@pytest.fixture(scope="module")
def expected():
    return {f: torch.load(FIXTURES / "tiny" / f"{f}.expected.pt", weights_only=True) for f in TINY}


@pytest.fixture(scope="module")
def backbones():
    return {f: load_tiny(f) for f in TINY}


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    if a.numel() == 0:  # e.g. the register tokens of a model without registers
        return
    diff = (a - b).abs().max().item()
    assert diff <= ATOL, f"max abs diff {diff:.3g}"


@pytest.mark.parametrize(("fixture", "size"), CASES)
def test_get_intermediate_layers_matches_official(fixture, size, expected, backbones):
    bb = backbones[fixture]
    rec = expected[fixture]["sizes"][size]
    x = tiny_inputs(bb.patch_size)[size]
    assert torch.allclose(x.double().sum(), torch.as_tensor(rec["input_sum"]).double())
    out = bb.get_intermediate_layers(
        x, n=4, reshape=True, return_class_token=True, norm=True, return_extra_tokens=True
    )
    close(torch.stack([o[0] for o in out]), rec["gil_patch"])
    close(torch.stack([o[1] for o in out]), rec["gil_cls"])
    if "gil_storage" in rec:
        close(torch.stack([o[2] for o in out]), rec["gil_storage"])


@pytest.mark.parametrize(("fixture", "size"), CASES)
def test_forward_features_matches_official(fixture, size, expected, backbones):
    """The official forward_features outputs: normed last layer tokens and the pre-norm tokens."""
    bb = backbones[fixture]
    rec = expected[fixture]["sizes"][size]
    x = tiny_inputs(bb.patch_size)[size]
    last = bb.num_layers - 1
    ((patch, cls, extra),) = bb.get_intermediate_layers(
        x, n=[last], return_class_token=True, return_extra_tokens=True
    )
    close(patch, rec["x_norm_patchtokens"])
    close(cls, rec["x_norm_clstoken"])
    close(extra, rec["x_storage_tokens"] if "x_storage_tokens" in rec else rec["x_norm_regtokens"])
    ((prenorm_patch, prenorm_cls, prenorm_extra),) = bb.get_intermediate_layers(
        x, n=1, return_class_token=True, return_extra_tokens=True, norm=False
    )
    prenorm = torch.cat([prenorm_cls[:, None], prenorm_extra, prenorm_patch], dim=1)
    close(prenorm, rec["x_prenorm"])


def test_forward_pads_and_matches_official_on_multiples(expected, backbones):
    """forward() = the configured layers of get_intermediate_layers, with padding for any size."""
    bb = backbones["dinov2_vits14_tiny"]
    x = tiny_inputs(14)["5x7"]
    maps = bb(x)
    rec = expected["dinov2_vits14_tiny"]["sizes"]["5x7"]
    close(torch.stack(maps), rec["gil_patch"])  # default layers = last 4 = the fixture's n=4
    odd = bb(x[..., :65, :90])  # 65x90 pixels -> padded to 70x98 -> 5x7 patches
    assert [tuple(m.shape) for m in odd] == [(2, 64, 5, 7)] * 4


def test_bf16_periods_matter_and_survive_dtype_casts(expected):
    """Without the checkpoint's bfloat16 periods the output is ~1e-3 off; casts keep them."""
    bb = load_tiny("dinov3_vits16_tiny_bf16periods")
    rec = expected["dinov3_vits16_tiny_bf16periods"]["sizes"]["7x7"]
    x = tiny_inputs(16)["7x7"]
    ckpt_periods = torch.load(
        FIXTURES / "tiny" / "dinov3_vits16_tiny_bf16periods.pth", weights_only=True
    )["rope_embed.periods"]
    assert ckpt_periods.dtype == torch.bfloat16
    assert torch.equal(bb.model.rope.periods, ckpt_periods.float())
    fresh = bb.model.rope._compute_periods()  # what timm alone would use
    assert (fresh - ckpt_periods.float()).abs().max() > 1e-4
    out = bb.get_intermediate_layers(x, n=4, reshape=True)
    close(torch.stack(out), rec["gil_patch"])
    bb.to(torch.bfloat16)  # timm recomputes fp32 periods on a down-cast; ours are put back
    assert bb.model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert torch.equal(bb.model.rope.periods.float(), ckpt_periods.float())
    bb.to(torch.float32)
    assert torch.equal(bb.model.rope.periods, ckpt_periods.float())
