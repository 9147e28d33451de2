"""Depth from the decoder's output, as Meta's depth heads compute it.

A decoder with ``n > 1`` output channels predicts weights over ``n`` depth bins (AdaBins style);
the depth is the weighted mean of the bin centres. With one channel it regresses the depth
directly: ``relu(x) + min_depth``.

Bins (``n`` centres on ``[min_depth, max_depth]``):

* ``"linear"``: uniform, ``linspace(min, max, n)`` (DINOv2 linear heads, DINOv3 SYNTHMIX DPT).
* ``"chmv2_mixlog"`` (CHMv2 canopy height): the model was trained on heights divided by 8, so
  with ``m = max / 8``: ``lin = linspace(min, m, n)``, ``log = exp(linspace(ln min, ln m, n))``,
  ``t = linspace(1, 0, n)`` and ``bins = t * log + (1 - t) * lin`` (log spacing near 0, linear near
  ``m``); the resulting depth is multiplied by 8 (metres).

Weights (``(B, n, h, w)`` logits ``x``, normalised over the ``n`` bins):

* ``"linear"``: ``relu(x) + 0.1``, divided by its sum.
* ``"chmv2_mixlog"``: ``y = relu(x)``, shifted by ``clamp(-min(y), 0, 1e-4) + 1e-8`` to be strictly
  positive, divided by its sum (clamped to >= 1e-12, non-finite sums replaced by 1); bins are
  clamped to >= 1e-12 and so is the weighted mean before the factor 8.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from densekit.heads.official.kinds import BinsStrategy

CHMV2_SCALE = 8.0  # CHMv2 was trained on heights / 8


def linear_bins(
    min_depth: float, max_depth: float, n: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """``n`` uniform bin centres on ``[min_depth, max_depth]``."""
    return torch.linspace(min_depth, max_depth, n, device=device, dtype=dtype)


def chmv2_mixlog_bins(
    min_depth: float, max_depth: float, n: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """CHMv2's ``n`` bin centres on ``[min_depth, max_depth / 8]``: log spacing blended into
    linear spacing (see the module docstring). The logarithms of the ends are taken in
    ``dtype``, as Meta takes them in float32."""
    top = max_depth / CHMV2_SCALE
    lin = torch.linspace(min_depth, top, n, device=device, dtype=dtype)
    low, high = (float(v) for v in torch.log(torch.tensor([min_depth, top], dtype=dtype)))
    log = torch.exp(torch.linspace(low, high, n, device=device, dtype=dtype))
    t = torch.linspace(1.0, 0.0, n, device=device, dtype=dtype)
    return t * log + (1.0 - t) * lin


def linear_weighted_depth(logits: Tensor, bins: Tensor) -> Tensor:
    """``(B, n, h, w)`` logits -> ``(B, 1, h, w)``: weights ``relu(x) + 0.1``, normalised."""
    w = torch.relu(logits) + 0.1
    w = w / w.sum(dim=1, keepdim=True)
    return torch.einsum("bnhw,n->bhw", w, bins).unsqueeze(1)


def chmv2_mixlog_depth(
    logits: Tensor,
    bins: Tensor,
    max_shift: float = 1e-4,
    shift_eps: float = 1e-8,
    eps: float = 1e-12,
) -> Tensor:
    """``(B, n, h, w)`` logits -> ``(B, 1, h, w)`` heights in metres (CHMv2 normalisation)."""
    y = torch.relu(logits)
    shift = (-y.amin(dim=1, keepdim=True)).clamp(min=0.0, max=max_shift) + shift_eps
    y = y + shift
    total = torch.nan_to_num(y.sum(dim=1, keepdim=True), nan=1.0, posinf=1.0, neginf=1.0)
    weights = y / total.clamp_min(eps)
    depth = (weights * bins.view(1, -1, 1, 1).clamp_min(eps)).sum(dim=1, keepdim=True)
    return depth.clamp_min(eps) * CHMV2_SCALE


class BinsToDepth(nn.Module):
    """Decoder output ``(B, n, h, w)`` -> depth ``(B, 1, h, w)`` (no parameters).

    Args:
        min_depth: lower end of the bins (and the regression offset when ``n == 1``).
        max_depth: upper end of the bins.
        strategy: ``"linear"`` or ``"chmv2_mixlog"`` (bins and weights, see the module docstring).
    """

    def __init__(self, min_depth: float, max_depth: float, strategy: BinsStrategy) -> None:
        super().__init__()
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.strategy: BinsStrategy = strategy

    def bins(self, n: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        """The ``n`` bin centres (for ``"chmv2_mixlog"`` in the model's scale, metres / 8)."""
        if self.strategy == "chmv2_mixlog":
            return chmv2_mixlog_bins(self.min_depth, self.max_depth, n, device, dtype)
        return linear_bins(self.min_depth, self.max_depth, n, device, dtype)

    def forward(self, logits: Tensor) -> Tensor:
        n = logits.shape[1]
        if n == 1:
            return torch.relu(logits) + self.min_depth
        bins = self.bins(n, logits.device, logits.dtype)
        if self.strategy == "chmv2_mixlog":
            return chmv2_mixlog_depth(logits, bins)
        return linear_weighted_depth(logits, bins)

    def extra_repr(self) -> str:
        return f"min_depth={self.min_depth}, max_depth={self.max_depth}, strategy={self.strategy}"
