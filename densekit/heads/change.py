"""Fusing the features of two dates computed by the same frozen backbone (siamese).

Per layer: ``"diff"`` = f2 - f1, ``"absdiff"`` = |f2 - f1|, ``"concat"`` = [f1, f2] (twice the
channels). Class tokens are fused the same way, so a DPT readout still applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

FusionMode = Literal["diff", "absdiff", "concat"]


class ChangeFusion(nn.Module):
    """``([maps of date 1], [maps of date 2]) -> [fused maps]``; no parameters."""

    def __init__(self, mode: FusionMode = "absdiff") -> None:
        super().__init__()
        self.mode = mode

    def out_channels(self, channels: Sequence[int]) -> list[int]:
        return [2 * c if self.mode == "concat" else c for c in channels]

    def _fuse(self, a: Tensor, b: Tensor) -> Tensor:
        if self.mode == "diff":
            return b - a
        if self.mode == "absdiff":
            return (b - a).abs()
        return torch.cat([a, b], dim=1)

    def forward(self, first: Sequence[Tensor], second: Sequence[Tensor]) -> list[Tensor]:
        return [self._fuse(a, b) for a, b in zip(first, second, strict=True)]
