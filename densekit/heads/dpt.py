"""DPT decoder (Ranftl et al., "Vision Transformers for Dense Prediction", 2021) on four layers.

Shapes, for four maps ``(B, C_i, h_i, w_i)`` of strides ``s_i``:

1. readout ``"project"`` (ViTs): each token is concatenated with its layer's class token and
   projected back, ``1x1 conv(2 C_i -> C_i) + GELU``; ``"ignore"`` skips it (ConvNeXt).
2. reassemble: ``1x1 conv C_i -> r_i`` and resize to the target stride ``t_i``. For a ViT (all
   ``s_i = p``) the targets are ``p/4, p/2, p, 2p`` (transposed conv x4, x2, identity, 3x3 conv
   with stride 2); maps that already have four strides (ConvNeXt 4/8/16/32) keep them.
3. ``3x3 conv r_i -> features`` for each level.
4. four fusion blocks from the coarsest level: residual conv units, add the finer level, resize
   to it (bilinear), ``1x1 conv``; the result has the finest target stride ``t_0``.
5. output block: segmentation ``3x3 conv + BN + ReLU + 1x1 conv -> num_outputs``; depth
   ``3x3 conv -> features/2, x2 upsampling, 3x3 conv -> 32, ReLU, 1x1 conv -> num_outputs``.

The result ``(B, num_outputs, H', W')`` is upsampled to the image by the model
(:class:`densekit.models.DenseModel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densekit.errors import DensekitError


class _Readout(nn.Module):
    """``(B, C, h, w)`` tokens + ``(B, C)`` class token -> ``(B, C, h, w)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(2 * channels, channels, 1), nn.GELU())

    def forward(self, x: Tensor, cls: Tensor) -> Tensor:
        cls_map = cls[:, :, None, None].expand_as(x)
        return self.proj(torch.cat([x, cls_map], 1))


def _resize_layer(channels: int, factor: float) -> nn.Module:
    """Change a map's stride by ``factor`` (> 1 upsamples): x4, x2, identity or /2, /4, ..."""
    if factor == 1:
        return nn.Identity()
    if factor > 1:
        f = round(factor)
        if abs(f - factor) > 1e-6:
            raise DensekitError(f"DPT: cannot upsample a map by the non-integer factor {factor}")
        return nn.ConvTranspose2d(channels, channels, kernel_size=f, stride=f)
    down = round(1 / factor)
    if abs(down - 1 / factor) > 1e-6:
        raise DensekitError(f"DPT: cannot downsample a map by the non-integer factor {1 / factor}")
    return nn.Conv2d(channels, channels, kernel_size=3, stride=down, padding=1)


class _ResidualConvUnit(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class _Fusion(nn.Module):
    """``prev`` (coarser, already fused) + ``skip`` -> fused map at ``size``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.skip_unit = _ResidualConvUnit(channels)
        self.unit = _ResidualConvUnit(channels)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, prev: Tensor | None, skip: Tensor, size: Sequence[int]) -> Tensor:
        x = self.skip_unit(skip)
        if prev is not None:
            x = x + prev
        x = self.unit(x)
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return self.out(x)


class DPTHead(nn.Module):
    """DPT decoder for segmentation logits or depth outputs (see the module docstring).

    Args:
        in_channels: channels of the four input maps.
        strides: their strides in pixels.
        num_outputs: classes, depth bins or 1.
        kind: ``"segmentation"`` or ``"depth"`` (selects the output block).
        features: channels of the fusion blocks (256 in the paper).
        readout: ``"project"`` (uses class tokens) or ``"ignore"``.
        reassemble_channels: ``r_i``; default ``C/8, C/4, C/2, C`` of the last map for ViTs
            and the input channels for multi-stride backbones.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        num_outputs: int,
        kind: Literal["segmentation", "depth"] = "segmentation",
        features: int = 256,
        readout: Literal["project", "ignore"] = "project",
        reassemble_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4 or len(strides) != 4:
            raise DensekitError(
                f"DPT needs four layers, got {len(in_channels)}; use layers 'dpt' or four indices"
            )
        single_stride = len(set(strides)) == 1
        if single_stride:
            s = strides[0]
            targets = [s / 4, s / 2, s, s * 2]
            base = in_channels[-1]
            reassemble = list(reassemble_channels or [base // 8, base // 4, base // 2, base])
        else:
            targets = list(strides)
            reassemble = list(reassemble_channels or in_channels)
        self.readout = readout
        self.readouts = nn.ModuleList(
            [_Readout(c) if readout == "project" else nn.Identity() for c in in_channels]
        )
        self.reassemble = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, r, 1), _resize_layer(r, s_in / t))
            for c, r, s_in, t in zip(in_channels, reassemble, strides, targets, strict=True)
        )
        self.project = nn.ModuleList(
            nn.Conv2d(r, features, 3, padding=1, bias=False) for r in reassemble
        )
        self.fusion = nn.ModuleList(_Fusion(features) for _ in range(4))
        self.output_stride = targets[0]
        if kind == "segmentation":
            self.output: nn.Module = nn.Sequential(
                nn.Conv2d(features, features, 3, padding=1, bias=False),
                nn.BatchNorm2d(features),
                nn.ReLU(),
                nn.Conv2d(features, num_outputs, 1),
            )
        else:
            half = max(features // 2, 1)
            self.output = nn.Sequential(
                nn.Conv2d(features, half, 3, padding=1),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(half, 32, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, num_outputs, 1),
            )
            self.output_stride = targets[0] / 2

    def forward(
        self, features: Sequence[Tensor], class_tokens: Sequence[Tensor] | None = None
    ) -> Tensor:
        if self.readout == "project":
            if class_tokens is None:
                raise DensekitError("DPT readout 'project' needs the class tokens")
            maps = [r(f, c) for r, f, c in zip(self.readouts, features, class_tokens, strict=True)]
        else:
            maps = list(features)
        levels = [p(r(m)) for p, r, m in zip(self.project, self.reassemble, maps, strict=True)]
        # coarsest first; each fused map is resized to the next finer level (the last to itself)
        x = self.fusion[3](None, levels[3], levels[2].shape[-2:])
        for i in (2, 1, 0):
            x = self.fusion[i](x, levels[i], levels[max(i - 1, 0)].shape[-2:])
        return self.output(x)
