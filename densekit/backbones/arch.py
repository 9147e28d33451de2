"""Architecture of one backbone instance (registry entry + overrides) and its timm build.

The official constructors derive hidden widths from a few arguments; the same rules are applied
here so that a tiny test model (``embed_dim=64, depth=6``) has the layout the official code would
give it:

* DINO and DINOv2 ``mlp``: ``hidden = int(embed_dim * mlp_ratio)``.
* DINOv2 ViT-g ``swiglufused``: ``h = int(embed_dim * mlp_ratio)``, then
  ``hidden = (int(h * 2 / 3) + 7) // 8 * 8``.
* DINOv3 ``mlp``: ``hidden = int(embed_dim * ffn_ratio)``.
* DINOv3 ``swiglu`` / ``swiglu64``: ``h = int(embed_dim * ffn_ratio)``, ``d = int(h * 2 / 3)``,
  ``hidden = d`` rounded up to a multiple of 8 / 64.

timm expresses the same widths through ``mlp_ratio``; :func:`build_timm_model` converts and then
checks the built layer widths, so a rounding slip fails loudly instead of changing the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import timm
import torch
from torch import nn

from densekit.backbones.registry import FFN, BackboneSpec
from densekit.errors import DensekitError

# Overrides each family accepts, under the official constructors' argument names.
ALLOWED_OVERRIDES: dict[str, tuple[str, ...]] = {
    "dino": ("embed_dim", "depth", "num_heads", "img_size", "mlp_ratio"),
    "dino_resnet": (),
    "dinov2": ("embed_dim", "depth", "num_heads", "img_size", "mlp_ratio"),
    "dinov3": ("embed_dim", "depth", "num_heads", "img_size", "ffn_ratio"),
    "dinov3_convnext": ("dims", "depths"),
}


@dataclass(frozen=True)
class Arch:
    """The concrete architecture: a registry entry with any overrides applied."""

    spec: BackboneSpec
    embed_dim: int
    depth: int
    num_heads: int
    img_size: int
    ffn_ratio: float
    dims: tuple[int, ...] = ()
    stage_depths: tuple[int, ...] = ()

    @property
    def ffn_hidden(self) -> int:
        """Hidden width of the FFN as the official constructor computes it."""
        return official_ffn_hidden(self.spec.ffn, self.embed_dim, self.ffn_ratio)

    def describe(self) -> str:
        if not self.spec.is_vit:
            return f"dims {list(self.dims)}, depths {list(self.stage_depths)}"
        return (
            f"embed_dim {self.embed_dim}, depth {self.depth}, num_heads {self.num_heads}, "
            f"ffn hidden {self.ffn_hidden}"
        )


def official_ffn_hidden(ffn: FFN, embed_dim: int, ratio: float) -> int:
    hidden = int(embed_dim * ratio)
    if ffn == "mlp":
        return hidden
    align = 8 if ffn == "swiglu8" else 64
    d = int(hidden * 2 / 3)
    return d + (-d % align)


def resolve_arch(spec: BackboneSpec, overrides: dict[str, Any]) -> Arch:
    """Apply ``overrides`` (official constructor names) to ``spec``; unknown keys are errors."""
    allowed = ALLOWED_OVERRIDES[spec.family]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise DensekitError(
            f"{spec.name}: unknown architecture override(s) {unknown}; valid for the "
            f"{spec.family} family: {list(allowed)}"
        )
    arch = Arch(
        spec=spec,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        img_size=spec.img_size,
        ffn_ratio=spec.ffn_ratio,
        dims=spec.dims,
        stage_depths=spec.stage_depths,
    )
    ratio_key = "ffn_ratio" if spec.family == "dinov3" else "mlp_ratio"
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        where = f"{spec.name}: override {key}={value!r}"
        if key == ratio_key:
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise DensekitError(f"{where}: a positive number is needed")
            changes["ffn_ratio"] = float(value)
        elif key in ("dims", "depths"):
            if not isinstance(value, list | tuple) or not all(_positive_int(v) for v in value):
                raise DensekitError(f"{where}: a list of 4 positive integers is needed")
            changes["dims" if key == "dims" else "stage_depths"] = tuple(int(v) for v in value)
            if key == "dims":
                changes["embed_dim"] = int(value[-1])
        elif not _positive_int(value):
            raise DensekitError(f"{where}: a positive integer is needed")
        else:
            changes[key] = int(value)
    arch = replace(arch, **changes)
    if spec.is_vit and arch.embed_dim % arch.num_heads:
        raise DensekitError(
            f"{spec.name}: embed_dim {arch.embed_dim} is not divisible by num_heads "
            f"{arch.num_heads}"
        )
    if spec.is_vit and arch.img_size % spec.patch_size:
        raise DensekitError(
            f"{spec.name}: img_size {arch.img_size} is not a multiple of the patch size "
            f"{spec.patch_size}"
        )
    if not spec.is_vit and (len(arch.dims) != 4 or len(arch.stage_depths) != 4):
        raise DensekitError(f"{spec.name}: dims and depths need 4 values each (one per stage)")
    return arch


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _timm_mlp_ratio(arch: Arch) -> float:
    """The ``mlp_ratio`` that makes timm build the official hidden width."""
    hidden = arch.ffn_hidden
    if arch.spec.ffn == "mlp":
        return arch.ffn_ratio
    if arch.spec.family == "dinov2":  # timm packs both SwiGLU halves into one fc1
        hidden *= 2
    return (hidden + 0.5) / arch.embed_dim  # int(embed_dim * ratio) == hidden exactly


def build_timm_model(arch: Arch, device: torch.device | str | None = None) -> nn.Module:
    """Build the timm module for ``arch`` (random init), on ``device`` ("meta" builds no memory)."""
    spec = arch.spec
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    if spec.is_vit:
        kwargs.update(
            dynamic_img_size=True,
            img_size=arch.img_size,
            embed_dim=arch.embed_dim,
            depth=arch.depth,
            num_heads=arch.num_heads,
            mlp_ratio=_timm_mlp_ratio(arch),
        )
    elif spec.family == "dinov3_convnext":
        kwargs.update(dims=arch.dims, depths=arch.stage_depths)
    kwargs.update(spec.timm_kwargs)
    with torch.device(device or "cpu"):
        model = timm.create_model(spec.timm_name, **kwargs)
    if spec.is_vit:
        _check_ffn_width(model, arch)
    return model


def _check_ffn_width(model: nn.Module, arch: Arch) -> None:
    mlp = model.blocks[0].mlp  # type: ignore[index,union-attr]
    if hasattr(mlp, "fc1_g"):
        built = mlp.fc1_g.out_features
    elif arch.spec.ffn != "mlp":  # packed SwiGLU: fc1 holds both halves
        built = mlp.fc1.out_features // 2
    else:
        built = mlp.fc1.out_features
    if built != arch.ffn_hidden:
        raise RuntimeError(
            f"internal error: timm built an FFN of width {built} for {arch.spec.name}, the "
            f"official rule gives {arch.ffn_hidden}"
        )
