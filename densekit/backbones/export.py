"""Write a timm module back into Meta's official key layout (the inverse of loading).

Loading converts an official state dict with timm's ``checkpoint_filter_fn``. That conversion
only moves values (renames, splits, slices), so it is inverted exactly by running it once on a
probe dict whose every element holds its own index: each timm element then names the official
key and position it came from. The official tensors timm has no place for (all unused at
inference, see :func:`densekit.backbones.load._expected_dropped_numel`) are filled with what the
official code holds there: the trained mask token if given, the DINOv3 ``bias_mask`` pattern and
RoPE periods, the ConvNeXt ``norms.3`` copy of ``norm``; zeros or identity norms otherwise.

The written file goes through the normal loading path, so it is checked key by key on read.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from densekit.backbones.arch import Arch, build_timm_model
from densekit.backbones.checkpoint import StateDict
from densekit.backbones.layout import official_layout
from densekit.backbones.load import to_timm_layout
from densekit.io import atomic_outputs


def _index_map(arch: Arch) -> dict[str, Tensor]:
    """timm key -> flat global official index of each of its elements.

    DINOv2 models with registers are the one place timm sums two official tensors: its
    ``cls_token`` is the official ``cls_token`` plus position slot 0. That key maps to the
    official ``cls_token`` (slot 0 is then written as zeros, which computes the same).
    """
    layout = official_layout(arch)
    total = sum(math.prod(shape) for shape in layout.values())
    if 4 * total >= 2**53:
        raise RuntimeError("internal error: model too large for an exact float64 index probe")
    meta = build_timm_model(arch, device="meta")
    outs = []
    for base in (0, 2 * total):  # a pure copy moves by exactly ``base``; a sum moves twice
        probe: StateDict = {}
        offset = 0
        for key, shape in layout.items():
            n = math.prod(shape)
            probe[key] = torch.arange(base + offset, base + offset + n, dtype=torch.float64)
            probe[key] = probe[key].reshape(shape)
            offset += n
        outs.append(to_timm_layout(arch.spec, probe, meta))  # the loader's own conversion
    cls_offset = 0
    out: dict[str, Tensor] = {}
    for key, a in outs[0].items():
        a = a.reshape(-1)
        moved = outs[1][key].reshape(-1) - a
        if bool((moved == 2 * total).all()):
            out[key] = a.to(torch.int64)
        elif key == "cls_token" and arch.spec.family == "dinov2":
            out[key] = torch.arange(cls_offset, cls_offset + a.numel())  # cls_token comes first
        else:
            raise RuntimeError(f"internal error: timm's {key} is not a copy of official values")
    return out


def _fill(arch: Arch, key: str, shape: tuple[int, ...], model: nn.Module) -> Tensor:
    """The value of an official tensor that timm does not hold."""
    if key.endswith("attn.qkv.bias_mask"):
        d = shape[0] // 3
        return torch.cat([torch.ones(d), torch.zeros(d), torch.ones(d)])
    if key == "rope_embed.periods":
        rope: Any = model.rope
        return rope.periods.detach().float().cpu().reshape(shape)
    if key.startswith(("local_cls_norm.", "norms.")) and key.endswith(".weight"):
        return torch.ones(shape)
    return torch.zeros(shape)


def official_state_dict(
    arch: Arch,
    model: nn.Module,
    mask_token: Tensor | None = None,
    rope_periods: Tensor | None = None,
) -> StateDict:
    """``model`` (a timm module built for ``arch``) as an official-layout state dict (fp32)."""
    layout = official_layout(arch)
    flat = {k: _fill(arch, k, shape, model).reshape(-1).float() for k, shape in layout.items()}
    if rope_periods is not None:
        flat["rope_embed.periods"] = rope_periods.detach().float().cpu().reshape(-1)
    if mask_token is not None:
        flat["mask_token"] = mask_token.detach().float().cpu().reshape(-1)
    starts: list[tuple[int, str]] = []
    offset = 0
    for key, shape in layout.items():
        starts.append((offset, key))
        offset += math.prod(shape)
    bounds = torch.tensor([s for s, _ in starts], dtype=torch.int64)
    names = [k for _, k in starts]
    state = model.state_dict()
    for tkey, index in _index_map(arch).items():
        values = state[tkey].detach().float().cpu().reshape(-1)
        which = torch.searchsorted(bounds, index, right=True) - 1
        for w in which.unique().tolist():
            sel = which == w
            flat[names[w]][index[sel] - bounds[w]] = values[sel]
    if arch.spec.family == "dinov3_convnext":  # one module stored under both names
        flat["norms.3.weight"] = flat["norm.weight"].clone()
        flat["norms.3.bias"] = flat["norm.bias"].clone()
    out = {k: flat[k].reshape(shape).contiguous() for k, shape in layout.items()}
    for key in [k for k in out if k.endswith("num_batches_tracked")]:  # batch-norm counters
        out[key] = out[key].long()
    return out


def save_official(sd: StateDict, path: str | Path) -> Path:
    """Write ``sd`` as a plain tensor dict (read with ``weights_only=True``), atomically."""
    path = Path(path)
    atomic_outputs({path: lambda tmp: torch.save(sd, tmp)})
    return path


def export_timm_model(
    arch: Arch, model: nn.Module, path: str | Path, **kwargs: Tensor | None
) -> Path:
    """:func:`official_state_dict` of ``model`` written to ``path``."""
    return save_official(official_state_dict(arch, model, **kwargs), path)
