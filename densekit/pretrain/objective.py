"""DINO's objective: the projection head and the loss terms (DINO, iBOT, KoLeo).

Shapes: ``B`` images, ``K`` prototypes, ``N`` patches per image, ``M`` masked patches in all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DINOHead(nn.Module):
    """MLP -> bottleneck -> l2 norm -> weight-normalised prototypes (norm fixed to 1)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck_dim, out_dim, bias=False)
        )
        g = self.last_layer.parametrizations.weight.original0
        g.data.fill_(1.0)
        g.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:  # (..., in_dim) -> (..., out_dim)
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, eps=1e-6))


def dino_loss(t_views: list[Tensor], s_views: list[Tensor]) -> Tensor:
    """Mean cross-entropy between the teacher's probabilities ``(B, K)`` of view ``i`` and the
    student's log-probabilities ``(B, K)`` of view ``j``, over every pair ``i != j`` (the
    teacher's views are the student's first ones: the global crops)."""
    terms = [
        -(t * s).sum(-1).mean()
        for i, t in enumerate(t_views)
        for j, s in enumerate(s_views)
        if i != j
    ]
    return torch.stack(terms).mean()


def koleo_loss(x: Tensor) -> Tensor:
    """Kozachenko-Leonenko entropy estimate (negated) of l2-normalised rows of ``x`` (0 for fewer
    than two rows, which have no neighbour)."""
    if x.shape[0] < 2:
        return x.new_zeros((), dtype=torch.float32)
    x = F.normalize(x.float(), dim=-1, eps=1e-8)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    dist_ = torch.cdist(x, x).masked_fill(eye, float("inf"))
    return -torch.log(dist_.min(dim=1).values + 1e-8).mean()


def ibot_loss(t_probs: Tensor, s_logp: Tensor, masks: Tensor) -> Tensor:
    """DINOv2's iBOT loss: teacher probabilities and student log-probabilities ``(M, K)`` of the
    ``M`` masked patches of ``masks`` ``(B, N)``; each image's patches weigh 1 / its masked count,
    and the sum is divided by the number of masked images."""
    per_image = masks.sum(1, keepdim=True)
    weight = (1 / per_image.clamp(min=1)).expand_as(masks)[masks]
    loss = -(t_probs * s_logp).sum(-1) * weight
    return loss.sum() / (per_image > 0).sum().clamp(min=1)
