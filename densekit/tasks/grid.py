"""A grid of linear heads trained on one backbone pass, the best chosen on validation.

``head_grid: {lr: [1e-4, 1e-3, 1e-2], layers: [last, last4]}`` on a task with ``head: linear``
trains one linear head per (layers, lr) pair on the same features (the backbone, or the feature
cache, runs once per batch), each with its own learning rate. The training loss is the sum of the
heads' losses (their parameters are disjoint, so each head gets its own gradient). After each
validation epoch the head with the best validation ``metric`` becomes the selected one
(``LinearHeadGrid.selected``, saved in the checkpoint): testing, prediction and ``tile`` use it,
and ``test_metrics.json`` lists every head's validation score.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from densekit.errors import DensekitError
from densekit.heads import LinearHeadGrid

if TYPE_CHECKING:
    from densekit.tasks.base import DenseTask

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


def selection_metric(task: DenseTask) -> tuple[str, bool]:
    """The validation metric that picks the head, and whether higher is better."""
    name = task.hp.head_grid.get("metric") or task.main_metric
    return name, name not in LOWER_IS_BETTER


def grid_step(task: DenseTask, batch: dict[str, Any], stage: str) -> Tensor:
    """A training/validation step of every head on one backbone pass; returns the summed loss."""
    head = task.head
    assert isinstance(head, LinearHeadGrid) and task.backbone is not None
    target = task.target(batch)
    images = task.inputs(batch)
    maps, tokens = task.encode(images, batch.get("cache_keys"))
    size = images[0].shape[-2:]
    outputs = [task.postprocess(task.upsample(y, size)) for y in head.forward_all(maps, tokens)]
    losses = torch.stack([task.loss_fn(y, target) for y in outputs])
    if not torch.isfinite(losses).all():
        raise DensekitError(f"{stage} loss is not finite on {batch.get('path')}")
    task.log(
        f"{stage}/loss",
        losses.mean(),
        on_step=stage == "train",
        on_epoch=True,
        batch_size=outputs[0].shape[0],
        sync_dist=stage != "train",
        prog_bar=stage == "train",
    )
    if stage == "val":
        for k, y in enumerate(outputs):
            task.update_metrics(y.detach(), target, f"val_g{k}")
    else:
        task.update_metrics(outputs[int(head.selected)].detach(), target, stage)
    return losses.sum()


def select_best(task: DenseTask) -> dict[str, float]:
    """Score every head on the validation epoch, select the best; returns its scores."""
    head = task.head
    assert isinstance(head, LinearHeadGrid)
    name, higher = selection_metric(task)
    all_scores = [task.compute_metrics(f"val_g{k}") for k in range(len(head.heads))]
    values = []
    for point, scores in zip(task.grid, all_scores, strict=True):
        if name not in scores:
            raise DensekitError(
                f"model.head_grid.metric (in a benchmark: the card's metric) {name!r} is not a "
                "validation metric; "
                f"valid: {sorted(scores)}"
            )
        value = scores[name]
        values.append(value if math.isfinite(value) else -math.inf if higher else math.inf)
        task.grid_scores[point.name] = value
    best = max(range(len(values)), key=lambda k: values[k] if higher else -values[k])
    head.selected.fill_(best)
    return all_scores[best]


def param_groups(task: DenseTask) -> list[dict[str, Any]]:
    """One optimizer group per head with its own learning rate, then the rest at ``lr``."""
    head = task.head
    assert isinstance(head, LinearHeadGrid)
    groups = [
        {"params": [p for p in h.parameters() if p.requires_grad], "lr": point.lr}
        for h, point in zip(head.heads, task.grid, strict=True)
    ]
    rest = [p for n, p in task.named_parameters() if p.requires_grad and not n.startswith("head.")]
    if rest:
        groups.append({"params": rest, "lr": task.hp.lr})
    return groups


def grid_record(task: DenseTask) -> dict[str, Any]:
    """The selected head and every head's last validation score (for ``test_metrics.json``)."""
    head = task.head
    assert isinstance(head, LinearHeadGrid)
    return {
        "selected": task.grid[int(head.selected)].name,
        "metric": selection_metric(task)[0],
        "val": dict(task.grid_scores),
    }


def check_validation(datamodule: Any) -> None:
    """A grid picks its head on validation data: the data module must have some."""
    datasets = getattr(datamodule, "datasets", None)
    if datasets is not None and "val" not in datasets:
        raise DensekitError(
            "model.head_grid picks its best head on validation data: give val files or "
            "split fractions with a validation part"
        )
