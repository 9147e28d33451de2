"""Change detection: the frozen backbone on both dates (shared weights), per-layer fusion, a
linear or DPT head. Binary change (one logit, BCE/Dice) or semantic change (one class per
from-to transition, cross-entropy), with F1, IoU, precision and recall of the change class."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

from densekit.heads.change import FusionMode
from densekit.models import OutputSpec
from densekit.tasks.base import DenseTask
from densekit.tasks.losses import ChangeLoss, ChangeLossFn, SegmentationLoss
from densekit.tasks.metrics import ChangeMetrics
from densekit.tasks.segmentation import check_labels


class ChangeDetectionTask(DenseTask):
    """Bi-temporal change detection (siamese frozen backbone, fused features).

    Args:
        num_classes: 2 for binary change (0 = no change, 1 = change); more for semantic change,
            with class 0 = no change and one class per from-to transition.
        class_names: names of the classes for metric names.
        fusion: ``"diff"`` (date 2 - date 1), ``"absdiff"`` or ``"concat"``.
        loss: binary change ``"bce"``, ``"dice"`` or ``"bce+dice"``; semantic change uses
            cross-entropy (+ Dice with ``"bce+dice"``/``"dice"``).
        ignore_index: label value kept out of losses and metrics.
        (the other arguments: see :class:`densekit.tasks.base.DenseTask`; the U-Net baseline
        sees both dates stacked as ``2 * in_channels`` bands)
    """

    kind = "change"
    main_metric = "f1"
    images = 2

    def __init__(
        self,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        fusion: FusionMode = "absdiff",
        loss: ChangeLoss = "bce+dice",
        ignore_index: int | None = 255,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    @property
    def binary(self) -> bool:
        return int(self.hp.num_classes) == 2

    def output_spec(self) -> OutputSpec:
        return OutputSpec.change(self.hp.num_classes, self.hp.class_names)

    def configure_loss(self) -> nn.Module:
        hp = self.hp
        if self.binary:
            return ChangeLossFn(hp.loss, hp.ignore_index)
        kind: Literal["ce", "ce+dice"] = "ce" if hp.loss == "bce" else "ce+dice"
        return SegmentationLoss(kind, hp.ignore_index)

    def configure_metric(self) -> nn.Module:
        hp = self.hp
        return ChangeMetrics(hp.num_classes, hp.ignore_index, self.output_spec().class_names)

    def target(self, batch: dict[str, Any]) -> Tensor:
        mask = batch["mask"]
        check_labels(mask, self.hp.num_classes, self.hp.ignore_index, batch.get("path"))
        return mask
