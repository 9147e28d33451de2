"""DINOv2's linear depth decoder (``BNHead`` of ``dinov2/hub/depth``), keys ``conv_depth.*``.

Despite the name there is no BatchNorm (it is commented out in Meta's code). For ``n`` layers
(1, or 4 for the ``linear4`` heads) of width ``D`` on an ``h x w`` patch grid:

1. each layer's map ``(B, D, h, w)`` gets its class token concatenated along the channels:
   ``(B, 2D, h, w)``;
2. every layer is resized to 4x the first layer's grid (bilinear, ``align_corners=False``) and
   the layers are concatenated: ``(B, 2nD, 4h, 4w)``;
3. ``1x1 conv -> n_bins`` (256): bin logits ``(B, 256, 4h, 4w)``.

The depth is then the ``"linear"`` bin mean (:mod:`densekit.heads.official.bins`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

UPSAMPLE = 4


class LinearDepthDecoder(nn.Module):
    """``n`` ``(map (B, D, h, w), class token (B, D))`` layers -> ``(B, n_bins, 4h, 4w)`` logits.

    Args:
        in_channels: ``2 n D`` (patch and class-token channels of every layer).
        n_bins: output channels (256 in the released heads).
    """

    def __init__(self, in_channels: int, n_bins: int) -> None:
        super().__init__()
        self.conv_depth = nn.Conv2d(in_channels, n_bins, kernel_size=1)

    def forward(self, layers: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        h, w = layers[0][0].shape[-2:]
        size = (h * UPSAMPLE, w * UPSAMPLE)
        maps = []
        for x, cls in layers:
            x = torch.cat([x, cls[:, :, None, None].expand_as(x)], dim=1)
            maps.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        return self.conv_depth(torch.cat(maps, dim=1))
