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


class LinearHeadGrid(nn.Module):
    """Several linear heads on one backbone pass, each on a subset of the maps (DINOv2's linear
    evaluation trains a grid of learning rates and layer choices together this way).

    ``forward`` runs the head chosen by the ``selected`` buffer (saved with the checkpoint, so
    testing, ``predict`` and ``tile`` use it); ``forward_all`` runs every head.

    Args:
        in_channels: channels of each input map.
        num_outputs: output channels.
        positions: for each head, the indices of the maps it reads.
        dropout: dropout of every head.
    """

    selected: Tensor

    def __init__(
        self,
        in_channels: Sequence[int],
        num_outputs: int,
        positions: Sequence[Sequence[int]],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.positions = [list(p) for p in positions]
        self.heads = nn.ModuleList(
            LinearHead([in_channels[i] for i in p], num_outputs, dropout=dropout)
            for p in self.positions
        )
        self.register_buffer("selected", torch.zeros((), dtype=torch.long))

    def run(
        self, k: int, features: Sequence[Tensor], class_tokens: Sequence[Tensor] | None = None
    ) -> Tensor:
        """Head ``k`` on its maps."""
        p = self.positions[k]
        tokens = [class_tokens[i] for i in p] if class_tokens is not None else None
        return self.heads[k]([features[i] for i in p], tokens)

    def forward(
        self, features: Sequence[Tensor], class_tokens: Sequence[Tensor] | None = None
    ) -> Tensor:
        return self.run(int(self.selected), features, class_tokens)

    def forward_all(
        self, features: Sequence[Tensor], class_tokens: Sequence[Tensor] | None = None
    ) -> list[Tensor]:
        return [self.run(k, features, class_tokens) for k in range(len(self.heads))]
