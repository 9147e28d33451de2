"""The linear protocol of DINOv2/DINOv3 segmentation: [dropout] -> BatchNorm -> 1x1 conv.

With one layer it is the "linear" head; with the last four layers concatenated along channels it
is the "ms" (multi-layer) head. Maps of different strides (ConvNeXt) are resized bilinearly to the
finest one before concatenation. The output stays at feature resolution; tasks upsample it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LinearHead(nn.Module):
    """``[(B, C_i, h_i, w_i)] -> (B, num_outputs, h, w)`` with ``(h, w)`` the finest grid.

    Args:
        in_channels: channels of each input map.
        num_outputs: output channels (classes, depth bins, or 1).
        dropout: dropout probability before the BatchNorm (0 disables it).
        batch_norm: use the BatchNorm of the protocol.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_outputs: int,
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        total = sum(in_channels)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.norm = nn.BatchNorm2d(total) if batch_norm else nn.Identity()
        self.conv = nn.Conv2d(total, num_outputs, kernel_size=1)

    def forward(
        self, features: Sequence[Tensor], class_tokens: Sequence[Tensor] | None = None
    ) -> Tensor:
        size = max((f.shape[-2:] for f in features), key=lambda s: s[0] * s[1])
        maps = [
            f
            if f.shape[-2:] == size
            else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            for f in features
        ]
        x = torch.cat(maps, dim=1)  # (B, sum C_i, h, w)
        return self.conv(self.norm(self.dropout(x)))
