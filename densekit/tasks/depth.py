"""Depth / height regression: bins or direct regression, SigLoss + gradient + L1 losses with
valid-pixel masks (targets that are NaN, 0 or negative are invalid and masked), RMSE, MAE,
AbsRel and delta accuracies."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

from densekit.errors import DensekitError
from densekit.models import OutputSpec
from densekit.models.official import official_kind_of, official_output
from densekit.models.outputs import DepthBins
from densekit.tasks.base import DenseTask
from densekit.tasks.losses import DepthLoss, DepthLossFn, align_scale_shift, valid_depth
from densekit.tasks.metrics import DepthMetrics


class DepthTask(DenseTask):
    """Dense depth or height (nDSM) regression with a frozen backbone.

    Args:
        depth_mode: ``"bins"`` (softmax over bin centres) or ``"regression"`` (ReLU + min_depth).
        num_bins, bin_spacing: bins and their spacing (``"linear"`` or ``"log"``; log needs
            ``min_depth > 0``, so heights from 0 use linear bins).
        min_depth, max_depth: range of the bins (and the floor of regression). ``max_depth`` is
            the top of the range: bins predict nothing above it, so set it above the largest
            target (for heights, the tallest building); regression has no top.
        loss: ``"silog"``, ``"silog+grad"``, ``"l1"`` or ``"l1+grad"``.
        grad_weight: weight of the gradient-matching term.
        scale_shift_invariant: align each prediction to its target by least squares (scale
            and shift) before the loss and the metrics (relative depth).
        height: heights above ground (nDSM): 0 is a valid target (ground); needs an L1 loss;
            AbsRel and delta use the pixels above 0. Set ``min_depth: 0`` with regression.
        (the other arguments: see :class:`densekit.tasks.base.DenseTask`)
    """

    kind = "depth"
    main_metric = "rmse"

    def __init__(
        self,
        depth_mode: Literal["bins", "regression"] = "bins",
        num_bins: int = 256,
        bin_spacing: Literal["linear", "log"] = "linear",
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        loss: DepthLoss = "silog+grad",
        grad_weight: float = 0.5,
        scale_shift_invariant: bool = False,
        height: bool = False,
        **kwargs: Any,
    ) -> None:
        if height and loss.startswith("silog"):
            raise DensekitError(
                f"loss {loss!r} works on log depths > 0; heights above ground (0 = ground) need "
                "'l1' or 'l1+grad'"
            )
        if depth_mode == "bins" and bin_spacing == "log" and min_depth <= 0:
            raise DensekitError(
                f"log-spaced bins need min_depth > 0, got model.init_args.min_depth={min_depth}: "
                "raise it or set model.init_args.bin_spacing: linear (heights from 0 = ground)"
            )
        if depth_mode == "bins" and max_depth <= min_depth:
            raise DensekitError(
                f"model.init_args.max_depth ({max_depth}) must be above model.init_args.min_depth "
                f"({min_depth}): the bins span min_depth to max_depth"
            )
        super().__init__(**kwargs)

    def output_spec(self) -> OutputSpec:
        hp = self.hp
        if hp.head == "official":
            return official_output(official_kind_of(hp.official_head), "depth")
        bins = DepthBins(hp.depth_mode, hp.num_bins, hp.bin_spacing, hp.min_depth, hp.max_depth)
        return OutputSpec.values("depth", bins)

    def configure_loss(self) -> nn.Module:
        hp = self.hp
        return DepthLossFn(hp.loss, hp.grad_weight, hp.scale_shift_invariant, hp.height)

    def configure_metric(self) -> nn.Module:
        return DepthMetrics(self.hp.height)

    def target(self, batch: dict[str, Any]) -> Tensor:
        return batch["depth"]

    def metric_input(self, output: Tensor, target: Tensor) -> Tensor:
        if self.hp.scale_shift_invariant:
            return align_scale_shift(output, target, valid_depth(target, not self.hp.height))
        return output

    def setup(self, stage: str) -> None:
        """Check that the data module reads the targets this task expects (depth or height)."""
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_height = getattr(dm, "height", None)
        if data_height is not None and bool(data_height) != bool(self.hp.height):
            raise DensekitError(
                f"the model has height={self.hp.height} (model.init_args.height) but the data has "
                f"height={data_height} (data.init_args.height): set both to true for heights "
                "above ground (0 = ground is valid) or both to false for depths"
            )
