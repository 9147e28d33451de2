"""DINOv3's linear segmentation decoder (``eval/segmentation/models/heads/linear_head.py``).

Keys ``batchnorm_layer.*`` (absent when trained without BatchNorm) and ``conv.*``. For ``n``
layers (one, the last, in Meta's ADE20k protocol) of width ``D`` on an ``h x w`` patch grid,
without class tokens:

1. the layers are resized to the first one's grid (bilinear, ``align_corners=False``; a ViT's
   layers share one grid) and concatenated: ``(B, nD, h, w)``;
2. [``Dropout2d(0.1)``, training only] -> BatchNorm -> ``1x1 conv -> classes``:
   ``(B, classes, h, w)``.

Meta's ``predict`` then resizes the logits to the image (bilinear, ``align_corners=False``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DROPOUT = 0.1


class LinearSegDecoder(nn.Module):
    """``n`` maps ``(B, D, h, w)`` -> class logits ``(B, classes, h, w)``.

    Args:
        in_channels: ``n D``.
        num_classes: output channels.
        batchnorm: a BatchNorm over the concatenated features (Meta's default).
    """

    def __init__(self, in_channels: int, num_classes: int, batchnorm: bool = True) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(DROPOUT)
        self.batchnorm_layer: nn.Module = (
            nn.BatchNorm2d(in_channels) if batchnorm else nn.Identity()
        )
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, layers: Sequence[Tensor]) -> Tensor:
        size = layers[0].shape[-2:]
        maps = [
            x
            if x.shape[-2:] == size
            else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for x in layers
        ]
        x = torch.cat(maps, dim=1)
        return self.conv(self.batchnorm_layer(self.dropout(x)))
