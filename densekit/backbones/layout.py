"""The official state-dict layout (key -> shape) of any registry architecture, overrides included.

Meta's hub constructors load with ``strict=True``, so a real checkpoint holds exactly these keys.
densekit checks a file against this layout before converting it to timm's names, so a missing,
unexpected or mis-shaped key is reported by its official name, including the tensors timm's
layout has no place for (``mask_token``, ``rope_embed.periods``, ``bias_mask``). The tests check
the generated layouts against the key lists Meta's code produced for all 21 architectures.
"""

from __future__ import annotations

from densekit.backbones.arch import Arch

Layout = dict[str, tuple[int, ...]]


def _ln(prefix: str, d: int) -> Layout:
    return {f"{prefix}.weight": (d,), f"{prefix}.bias": (d,)}


def _linear(prefix: str, out: int, inp: int, bias: bool = True) -> Layout:
    lay: Layout = {f"{prefix}.weight": (out, inp)}
    if bias:
        lay[f"{prefix}.bias"] = (out,)
    return lay


def official_layout(arch: Arch) -> Layout:
    """Keys and shapes of ``arch``'s official checkpoint."""
    spec = arch.spec
    if spec.family == "dinov3_convnext":
        return _convnext_layout(arch)
    if spec.family == "dino_resnet":
        return _resnet_layout(arch)
    d, p, h = arch.embed_dim, spec.patch_size, arch.ffn_hidden
    dino = spec.family == "dino"  # DINO (v1): no registers, mask token or LayerScale
    lay: Layout = {"cls_token": (1, 1, d)}
    if spec.has_pos_embed:
        grid = arch.img_size // p
        lay["pos_embed"] = (1, 1 + grid * grid, d)
        if spec.num_register_tokens:
            lay["register_tokens"] = (1, spec.num_register_tokens, d)
    else:
        lay["storage_tokens"] = (1, spec.num_register_tokens, d)
    if not dino:
        lay["mask_token"] = (1, d)
    lay["patch_embed.proj.weight"] = (d, 3, p, p)
    lay["patch_embed.proj.bias"] = (d,)
    if spec.family == "dinov3":
        lay["rope_embed.periods"] = (d // arch.num_heads // 4,)
    for i in range(arch.depth):
        b = f"blocks.{i}."
        lay.update(_ln(b + "norm1", d))
        lay.update(_linear(b + "attn.qkv", 3 * d, d, bias=spec.qkv_bias))
        if spec.family == "dinov3" and spec.qkv_bias:
            lay[b + "attn.qkv.bias_mask"] = (3 * d,)
        lay.update(_linear(b + "attn.proj", d, d))
        if not dino:
            lay[b + "ls1.gamma"] = (d,)
        lay.update(_ln(b + "norm2", d))
        if spec.ffn == "mlp":
            lay.update(_linear(b + "mlp.fc1", h, d))
            lay.update(_linear(b + "mlp.fc2", d, h))
        elif spec.family == "dinov2":  # packed SwiGLU
            lay.update(_linear(b + "mlp.w12", 2 * h, d))
            lay.update(_linear(b + "mlp.w3", d, h))
        else:
            lay.update(_linear(b + "mlp.w1", h, d))
            lay.update(_linear(b + "mlp.w2", h, d))
            lay.update(_linear(b + "mlp.w3", d, h))
        if not dino:
            lay[b + "ls2.gamma"] = (d,)
    lay.update(_ln("norm", d))
    if spec.untied_local_cls_norm:
        lay.update(_ln("local_cls_norm", d))
    return lay


def _convnext_layout(arch: Arch) -> Layout:
    dims, depths = arch.dims, arch.stage_depths
    lay: Layout = {
        "downsample_layers.0.0.weight": (dims[0], 3, 4, 4),
        "downsample_layers.0.0.bias": (dims[0],),
        **_ln("downsample_layers.0.1", dims[0]),
    }
    for i in range(1, 4):
        lay.update(_ln(f"downsample_layers.{i}.0", dims[i - 1]))
        lay[f"downsample_layers.{i}.1.weight"] = (dims[i], dims[i - 1], 2, 2)
        lay[f"downsample_layers.{i}.1.bias"] = (dims[i],)
    for i, (d, n) in enumerate(zip(dims, depths, strict=True)):
        for j in range(n):
            b = f"stages.{i}.{j}."
            lay[b + "gamma"] = (d,)
            lay[b + "dwconv.weight"] = (d, 1, 7, 7)
            lay[b + "dwconv.bias"] = (d,)
            lay.update(_ln(b + "norm", d))
            lay.update(_linear(b + "pwconv1", 4 * d, d))
            lay.update(_linear(b + "pwconv2", d, 4 * d))
    lay.update(_ln("norm", dims[-1]))
    lay.update(_ln("norms.3", dims[-1]))
    return lay


def _bn(prefix: str, d: int) -> Layout:
    return {
        f"{prefix}.weight": (d,),
        f"{prefix}.bias": (d,),
        f"{prefix}.running_mean": (d,),
        f"{prefix}.running_var": (d,),
        f"{prefix}.num_batches_tracked": (),
    }


def _resnet_layout(arch: Arch) -> Layout:
    """torchvision's ResNet (bottleneck blocks, expansion 4) without ``fc``."""
    lay: Layout = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    inp = 64
    for i, (out, n) in enumerate(zip(arch.dims, arch.stage_depths, strict=True)):
        width = out // 4
        for j in range(n):
            b = f"layer{i + 1}.{j}."
            lay[b + "conv1.weight"] = (width, inp, 1, 1)
            lay.update(_bn(b + "bn1", width))
            lay[b + "conv2.weight"] = (width, width, 3, 3)
            lay.update(_bn(b + "bn2", width))
            lay[b + "conv3.weight"] = (out, width, 1, 1)
            lay.update(_bn(b + "bn3", out))
            if j == 0:
                lay[b + "downsample.0.weight"] = (out, inp, 1, 1)
                lay.update(_bn(b + "downsample.1", out))
            inp = out
    return lay


def layout_differences(expected: Layout, got: dict[str, tuple[int, ...]]) -> list[str]:
    """Human-readable differences: missing, unexpected and mis-shaped keys (at most 10 each)."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shaped = [
        f"{k} {list(got[k])} (expected {list(expected[k])})"
        for k in expected
        if k in got and tuple(got[k]) != expected[k]
    ]
    out = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)):
        if keys:
            more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
            out.append(f"{label} key(s): {', '.join(keys[:10])}{more}")
    return out
