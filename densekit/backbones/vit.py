"""DINOv2 and DINOv3 ViTs: timm's modules, Meta's semantics.

The weights live in a timm ``VisionTransformer`` (DINOv2) or ``Eva`` (DINOv3); this module runs
them the way Meta's reference code does. Two places differ from timm's own forward:

* DINOv2 position embeddings at a grid other than the checkpoint's are interpolated as the
  official ``interpolate_pos_encoding`` does: bicubic, in fp32, skipped only for the native square
  grid. Models without registers use ``antialias=False`` and ``scale_factor=((h + 0.1) / M,
  (w + 0.1) / M)`` (the "0.1 offset"); models with registers use ``antialias=True`` and
  ``size=(h, w)``. timm uses the latter for both, which is up to 0.96 off for the former.
* DINOv3 RoPE periods are taken from the checkpoint (the released files store them in
  bfloat16; timm recomputes them in fp32), and put back after any dtype cast of the module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densekit.backbones.arch import Arch
from densekit.backbones.base import Backbone, WeightsInfo
from densekit.backbones.registry import Normalization
from densekit.errors import DensekitError, InputImageError


def official_pos_embed(
    pos: Tensor, grid: int, h: int, w: int, antialias: bool, offset: float
) -> Tensor:
    """DINOv2's interpolation of an ``(1, M*M, C)`` patch position table to ``h x w``.

    Returns ``(1, h*w, C)`` in ``pos``'s dtype; computed in fp32 as the official code does.
    """
    if h == w == grid:
        return pos
    c = pos.shape[-1]
    table = pos.float().reshape(1, grid, grid, c).permute(0, 3, 1, 2)
    if offset:
        kwargs: dict = {"scale_factor": ((h + offset) / grid, (w + offset) / grid)}
    else:
        kwargs = {"size": (h, w)}
    out = F.interpolate(table, mode="bicubic", antialias=antialias, **kwargs)
    if out.shape[-2:] != (h, w):  # cannot happen for offset 0.1; guards future offsets
        raise RuntimeError(f"pos-embed interpolation gave {tuple(out.shape[-2:])}, not {(h, w)}")
    return out.permute(0, 2, 3, 1).reshape(1, h * w, c).to(pos.dtype)


class DinoViT(Backbone):
    """A frozen DINOv2 / DINOv3 ViT (see module docstring for the semantics)."""

    def __init__(
        self,
        arch: Arch,
        model: nn.Module,
        layers: Sequence[int],
        weights: WeightsInfo,
        normalization: Normalization | None,
        autocast_dtype: torch.dtype | None = None,
        rope_periods: Tensor | None = None,
    ) -> None:
        super().__init__(arch, model, layers, weights, normalization, autocast_dtype)
        self.dinov3 = arch.spec.family == "dinov3"
        self.num_prefix = 1 + arch.spec.num_register_tokens
        # Plain attribute, not a buffer: dtype casts of the module must not round it.
        self._rope_periods = None if rope_periods is None else rope_periods.float().cpu()
        self._restore_rope_periods()

    @property
    def in_chans(self) -> int:
        return int(self.model.patch_embed.proj.in_channels)

    @property
    def grid(self) -> int:
        """Side of the checkpoint's position-embedding grid (DINOv2)."""
        return self.arch.img_size // self.patch_size

    def _restore_rope_periods(self) -> None:
        if self._rope_periods is not None:
            periods = self.model.rope.periods
            if periods.device.type != "meta":
                periods.copy_(self._rope_periods.to(periods.device, periods.dtype))

    def _apply(self, fn, recurse: bool = True):
        out = super()._apply(fn, recurse)
        # timm recomputes the periods in fp32 after a down-cast; put the checkpoint's back.
        self._restore_rope_periods()
        return out

    # -- tokens ------------------------------------------------------------------------------
    def _embed(
        self, x: Tensor, masks: Tensor | None = None, mask_token: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Prefix + patch tokens with positions (and the RoPE table for DINOv3).

        ``masks`` ``(B, h*w)`` replaces the marked patch embeddings by ``mask_token`` before the
        positions are added, as the official code does for iBOT (pretraining only).
        """
        m = self.model
        b = x.shape[0]
        x = m.patch_embed(x)  # (B, h, w, C) with timm's dynamic_img_size
        _, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        if masks is not None and mask_token is not None:
            x = torch.where(masks[..., None], mask_token.to(x.dtype).view(1, 1, -1), x)
        cls = m.cls_token.expand(b, -1, -1)
        prefix = [cls]
        if m.reg_token is not None:
            prefix.append(m.reg_token.expand(b, -1, -1))
        rope = None
        if self.dinov3:
            rope = m.rope.get_embed(shape=(h, w))
        else:
            pos = m.pos_embed
            if not m.no_embed_class:  # no registers: slot 0 of the table belongs to cls
                prefix[0] = cls + pos[:, :1]
                pos = pos[:, 1:]
            reg = self.spec.num_register_tokens > 0
            pos = official_pos_embed(
                pos, self.grid, h, w, antialias=reg, offset=0.0 if reg else 0.1
            )
            x = x + pos.to(x.dtype)
        x = torch.cat([*prefix, x], dim=1)
        return m.norm_pre(x), rope

    def _blocks(self, x: Tensor, take: Sequence[int]) -> list[Tensor]:
        """Token sequences ``(B, 1 + R + h*w, C)`` after each block in ``take`` (no norm)."""
        x, rope = self._embed(x)
        wanted = set(take)
        outs: dict[int, Tensor] = {}
        for i, blk in enumerate(self.model.blocks):
            x = blk(x, rope=rope) if self.dinov3 else blk(x)
            if i in wanted:
                outs[i] = x
            if len(outs) == len(wanted):
                break
        return [outs[i] for i in take]

    def encode(
        self, x: Tensor, masks: Tensor | None = None, mask_token: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Normed class token ``(B, C)`` and patch tokens ``(B, h*w, C)`` of the last block,
        with autograd (for pretraining; sides must be multiples of the patch)."""
        x, rope = self._embed(x, masks, mask_token)
        for blk in self.model.blocks:
            x = blk(x, rope=rope) if self.dinov3 else blk(x)
        x = self.model.norm(x)
        return x[:, 0], x[:, self.num_prefix :]

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
        return_extra_tokens: bool = False,
    ) -> tuple:
        """Official ``get_intermediate_layers``: ``n`` is the last n blocks or block indices.

        Returns a tuple with one entry per layer: the patch tokens ``(B, h*w, C)`` (or
        ``(B, C, h, w)`` with ``reshape``), paired with the class token ``(B, C)`` when
        ``return_class_token`` and the register/storage tokens ``(B, R, C)`` when
        ``return_extra_tokens``. Sides must be multiples of the patch size.
        """
        depth = self.num_layers
        take = list(range(depth - n, depth)) if isinstance(n, int) else [int(i) for i in n]
        bad = [i for i in take if not 0 <= i < depth]
        if bad:
            raise DensekitError(f"{self.name}: block indices {bad} out of range 0..{depth - 1}")
        take = sorted(set(take))  # the official code collects outputs in block order
        hgt, wid = x.shape[-2:]
        p = self.patch_size
        if hgt % p or wid % p:
            raise InputImageError(
                f"{self.name}: input {hgt}x{wid} is not a multiple of the patch size {p}; pad it "
                f"to {hgt + (-hgt % p)}x{wid + (-wid % p)} (forward() does this)"
            )
        outputs = self._blocks(x, take)
        if norm:
            outputs = [self.model.norm(o) for o in outputs]
        k = self.num_prefix
        class_tokens = [o[:, 0] for o in outputs]
        extra = [o[:, 1:k] for o in outputs]
        patches = [o[:, k:] for o in outputs]
        if reshape:
            b, h, w = x.shape[0], hgt // p, wid // p
            patches = [o.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous() for o in patches]
        if return_class_token and return_extra_tokens:
            return tuple(zip(patches, class_tokens, extra, strict=True))
        if return_class_token:
            return tuple(zip(patches, class_tokens, strict=True))
        if return_extra_tokens:
            return tuple(zip(patches, extra, strict=True))
        return tuple(patches)
