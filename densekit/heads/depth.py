"""Depth from head outputs: direct regression or a classification over depth bins.

* ``"regression"``: ``depth = ReLU(x) + min_depth`` on one output channel.
* ``"bins"``: ``n`` bin centres spaced linearly or logarithmically between ``min_depth`` and
  ``max_depth``; ``depth = sum_k softmax(x)_k * centre_k`` (the DINOv2 depth heads' 256 linear
  bins are the default).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn


class DepthOutput(nn.Module):
    """``(B, n, H, W)`` head outputs -> ``(B, 1, H, W)`` depth."""

    centres: Tensor

    def __init__(
        self,
        mode: Literal["regression", "bins"] = "bins",
        num_bins: int = 256,
        spacing: Literal["linear", "log"] = "linear",
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.min_depth = min_depth
        self.num_outputs = 1 if mode == "regression" else num_bins
        if mode == "bins":
            if spacing == "linear":
                centres = torch.linspace(min_depth, max_depth, num_bins)
            else:
                centres = torch.logspace(math.log10(min_depth), math.log10(max_depth), num_bins)
            self.register_buffer("centres", centres.view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "regression":
            return torch.relu(x) + self.min_depth
        return (x.softmax(dim=1) * self.centres).sum(dim=1, keepdim=True)
