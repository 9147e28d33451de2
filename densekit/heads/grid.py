"""A grid of linear heads trained on one backbone pass, the best chosen on validation.

``head_grid: {lr: [1e-4, 1e-3, 1e-2], layers: [last, last4]}`` (with ``head: linear``) trains one
linear head per (layers, lr) pair on the same features: the backbone, or the feature cache, runs
once per batch, and each head has its own learning rate (DINOv2's linear evaluation trains its
grid this way). The training loss is the sum of the heads' losses; their parameters are
disjoint, so each head gets its own gradient. After each validation epoch the head with the best
validation ``metric`` becomes the ``selected`` one (a buffer, saved with the checkpoint), which
:meth:`HeadGrid.forward` runs: testing, prediction and tiling use it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from densekit.errors import DensekitError
from densekit.heads.linear import LinearHead

GRID_LAYERS = ("last", "last4")
LOWER_IS_BETTER = {"rmse", "mae", "absrel", "loss"}


@dataclass(frozen=True)
class GridPoint:
    """One head of the grid: its name, learning rate and the backbone maps it reads."""

    name: str
    lr: float
    positions: tuple[int, ...]


def grid_points(spec: dict[str, Any], n_maps: int, layers: Any) -> list[GridPoint]:
    """The heads of ``head_grid`` (``lr`` x ``layers``) on a backbone giving ``n_maps`` maps."""
    unknown = set(spec) - {"lr", "layers", "metric"}
    if unknown:
        raise DensekitError(
            f"model.head_grid: unknown keys {sorted(unknown)}; valid: lr, layers, metric"
        )
    lrs = spec.get("lr")
    if not isinstance(lrs, list) or not lrs or not all(isinstance(v, int | float) for v in lrs):
        raise DensekitError(f"model.head_grid.lr must be a list of learning rates, got {lrs!r}")
    choices = spec.get("layers", ["last"])
    if not isinstance(choices, list) or not choices or not set(choices) <= set(GRID_LAYERS):
        raise DensekitError(
            f"model.head_grid.layers must be a list of {GRID_LAYERS}, got {choices!r}"
        )
    if "last4" in choices and n_maps < 4:
        raise DensekitError(
            f"model.head_grid.layers has 'last4' but the backbone gives {n_maps} map(s) with "
            f"layers={layers!r}: set model.layers: last4"
        )
    points = []
    for choice, lr in itertools.product(choices, lrs):
        positions = (n_maps - 1,) if choice == "last" else tuple(range(n_maps - 4, n_maps))
        points.append(GridPoint(f"{choice}_lr{float(lr):g}", float(lr), positions))
    return points


class HeadGrid(nn.Module):
    """Several linear heads on one backbone pass, each on a subset of the maps.

    ``forward`` runs the head chosen by the ``selected`` buffer; :meth:`forward_all` runs every
    head (training and validation); :meth:`select` picks the best on validation scores.

    Args:
        in_channels: channels of each input map.
        num_outputs: output channels.
        points: the heads (name, learning rate, positions of the maps each reads).
        metric: the validation metric that picks the head.
        dropout: dropout of every head.
    """

    selected: Tensor

    def __init__(
        self,
        in_channels: Sequence[int],
        num_outputs: int,
        points: Sequence[GridPoint],
        metric: str,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.points = list(points)
        self.metric = metric
        self.heads = nn.ModuleList(
            LinearHead([in_channels[i] for i in p.positions], num_outputs, dropout=dropout)
            for p in self.points
        )
        self.register_buffer("selected", torch.zeros((), dtype=torch.long))
        self.scores: dict[str, float] = {}  # each head's last validation score

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER

    @property
    def selected_name(self) -> str:
        return self.points[int(self.selected)].name

    def run(
        self, k: int, features: Sequence[Tensor], class_tokens: Sequence[Tensor] | None = None
    ) -> Tensor:
        """Head ``k`` on its maps."""
        p = self.points[k].positions
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

    def select(self, scores: Sequence[dict[str, float]]) -> int:
        """Select the head with the best ``metric`` among each head's validation ``scores``;
        returns its index. A non-finite score ranks last."""
        values = []
        for point, head_scores in zip(self.points, scores, strict=True):
            if self.metric not in head_scores:
                raise DensekitError(
                    f"model.head_grid.metric (in a benchmark: the card's metric) {self.metric!r} "
                    f"is not a validation metric; valid: {sorted(head_scores)}"
                )
            value = head_scores[self.metric]
            self.scores[point.name] = value
            worst = -math.inf if self.higher_is_better else math.inf
            values.append(value if math.isfinite(value) else worst)
        sign = 1 if self.higher_is_better else -1
        best = max(range(len(values)), key=lambda k: sign * values[k])
        self.selected.fill_(best)
        return best

    def param_groups(self) -> Iterator[dict[str, Any]]:
        """One optimizer group per head, with its own learning rate."""
        for head, point in zip(self.heads, self.points, strict=True):
            yield {"params": [p for p in head.parameters() if p.requires_grad], "lr": point.lr}

    def record(self) -> dict[str, Any]:
        """The selected head and every head's last validation score (``test_metrics.json``)."""
        return {"selected": self.selected_name, "metric": self.metric, "val": dict(self.scores)}
