"""Semantic segmentation: class logits per pixel, cross-entropy/Dice/Focal/Lovasz losses,
mIoU with per-class IoU, macro F1 and micro accuracy."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from densekit.errors import DensekitError
from densekit.models import OutputSpec
from densekit.models.official import official_kind_of, official_output
from densekit.tasks.base import DenseTask
from densekit.tasks.losses import SegLoss, SegmentationLoss
from densekit.tasks.metrics import ConfusionMetrics


def check_labels(mask: Tensor, num_classes: int, ignore_index: int | None, paths: Any) -> None:
    """Label values must be classes or ``ignore_index``; the error names value and file."""
    bad = (mask < 0) | (mask >= num_classes)
    if ignore_index is not None:
        bad &= mask != ignore_index
    if bad.any():
        i = int(bad.flatten(1).any(1).nonzero()[0])
        value = int(mask[i][bad[i]][0])
        path = paths[i] if isinstance(paths, list | tuple) else paths
        raise DensekitError(
            f"{path}: label value {value} is outside the classes 0..{num_classes - 1}"
            + (f" and is not ignore_index {ignore_index}" if ignore_index is not None else "")
            + " (map raw values with the data module's label_map)"
        )


class SegmentationTask(DenseTask):
    """Per-pixel classification with a frozen backbone and a linear/DPT head (or a U-Net).

    Args:
        num_classes: number of classes.
        class_names: names used in per-class metric names (default ``class0`` ...).
        loss: ``"ce"``, ``"dice"``, ``"focal"``, ``"lovasz"`` or ``"ce+dice"``.
        class_weights: cross-entropy class weights.
        ignore_index: label value kept out of losses and metrics (None: none).
        (the other arguments: see :class:`densekit.tasks.base.DenseTask`)
    """

    kind = "segmentation"
    main_metric = "miou"

    def __init__(
        self,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        loss: SegLoss = "ce",
        class_weights: list[float] | None = None,
        ignore_index: int | None = 255,
        **kwargs: Any,
    ) -> None:
        if num_classes < 2:
            raise DensekitError(f"num_classes must be >= 2, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise DensekitError(f"{len(class_names)} class_names for {num_classes} classes")
        if class_weights is not None and len(class_weights) != num_classes:
            raise DensekitError(f"{len(class_weights)} class_weights for {num_classes} classes")
        super().__init__(**kwargs)

    def output_spec(self) -> OutputSpec:
        hp = self.hp
        if hp.head == "official":
            kind = official_kind_of(hp.official_head)
            return official_output(kind, "segmentation", hp.num_classes, hp.class_names)
        return OutputSpec.segmentation(hp.num_classes, hp.class_names)

    def configure_loss(self) -> nn.Module:
        hp = self.hp
        return SegmentationLoss(hp.loss, hp.ignore_index, hp.class_weights)

    def configure_metric(self) -> nn.Module:
        hp = self.hp
        names = self.output_spec().class_names
        return ConfusionMetrics(hp.num_classes, hp.ignore_index, names)

    def target(self, batch: dict[str, Any]) -> Tensor:
        mask = batch["mask"]
        check_labels(mask, self.hp.num_classes, self.hp.ignore_index, batch.get("path"))
        return mask
