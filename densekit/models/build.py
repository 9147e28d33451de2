"""Building a model's parts from its :class:`~densekit.models.config.ModelConfig` and
:class:`~densekit.models.outputs.OutputSpec`.

The parts are built in a fixed order (backbone, head, pixel-detail decoder), so a seed gives
the same initial weights whatever calls the builder (a task, a checkpoint loader).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from densekit.backbones import Backbone, WeightsInfo, load_backbone
from densekit.errors import DensekitError
from densekit.heads import ChangeFusion, DepthOutput, DPTHead, HeadGrid, LinearHead
from densekit.heads.grid import grid_points
from densekit.heads.official import load_head_file, official_head
from densekit.heads.refine import DetailDecoder
from densekit.models.config import ModelConfig
from densekit.models.inputs import InputSpec, input_statistics
from densekit.models.outputs import OutputSpec


@dataclass
class ModelParts:
    """The modules of a :class:`~densekit.models.DenseModel` (None where unused)."""

    inputs: InputSpec
    backbone: Backbone | None = None
    fusion: ChangeFusion | None = None
    head: nn.Module | None = None
    detail: DetailDecoder | None = None
    unet: nn.Module | None = None
    depth_output: DepthOutput | None = None


def build_parts(
    config: ModelConfig, output: OutputSpec, state: Mapping[str, Tensor] | None = None
) -> ModelParts:
    """The modules ``config`` describes, with outputs as ``output`` says (its head channels,
    depth bins).

    Args:
        state: a checkpoint's tensors (DenseModel keys), which an official head is built from
            (its widths read off them) instead of Meta's file; the head's tensors are loaded
            from them afterwards in any case.
    """
    if config.head.kind == "unet":
        parts = ModelParts(inputs=_inputs(config, None), unet=_unet(config, output))
    elif config.head.official is not None:
        parts = _official_parts(config, output, state)
    else:
        parts = _feature_parts(config, output)
    if output.depth is not None:
        d = output.depth
        parts.depth_output = DepthOutput(d.mode, d.num_bins, d.spacing, d.min_depth, d.max_depth)
    return parts


def _unet(config: ModelConfig, output: OutputSpec) -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet(
        encoder_name=config.head.unet_encoder,
        encoder_weights=None,
        in_channels=config.in_channels * config.images,
        classes=output.head_channels,
    )


def _feature_parts(config: ModelConfig, output: OutputSpec) -> ModelParts:
    b, h, d = config.backbone, config.head, config.detail
    if b.weights is None:  # ModelConfig.check refuses it; for the type checker
        raise DensekitError(f"model.weights is required for the {h.kind} head on {b.name}")
    seen = len(b.bands) if b.bands else config.in_channels
    backbone = load_backbone(
        b.name, b.weights, layers=b.layers, in_chans=seen if seen != 3 else None, **b.overrides
    )
    fusion = ChangeFusion(config.fusion) if config.fusion is not None else None
    channels = backbone.out_channels
    if fusion is not None:
        channels = fusion.out_channels(channels)
    outputs = d.detail_channels if d.pixel_branch > 0 else output.head_channels
    head: nn.Module
    if h.grid is not None:
        points = grid_points(h.grid, len(channels), b.layers)
        head = HeadGrid(channels, output.head_channels, points, h.grid["metric"], h.dropout)
    elif h.kind == "linear":
        head = LinearHead(channels, outputs, dropout=h.dropout)
    else:
        head = DPTHead(
            channels,
            backbone.strides,
            outputs,
            kind="depth" if output.depth is not None else "segmentation",
            features=h.dpt_features,
            readout="project" if backbone.spec.is_vit else "ignore",
        )
    detail = None
    if d.active:
        detail = DetailDecoder(
            config.in_channels,
            config.images,
            outputs,
            output.head_channels,
            d.upsampler,
            d.pixel_branch,
        )
    return ModelParts(
        inputs=_inputs(config, backbone),
        backbone=backbone,
        fusion=fusion,
        head=head,
        detail=detail,
    )


def _official_parts(
    config: ModelConfig, output: OutputSpec, state: Mapping[str, Tensor] | None
) -> ModelParts:
    """Meta's head (from its file, or from a checkpoint's ``head.decoder.*`` tensors) on the
    backbone at the layers it takes."""
    b, o = config.backbone, config.head.official
    if o is None or b.weights is None:  # ModelConfig.check refuses it; for the type checker
        raise DensekitError("model.head official needs model.official_head and model.weights")
    if state is None:
        head = load_head_file(o.kind, o.weights, b.name, o.layers, o.depth_range, **b.overrides)
    else:
        prefix = "head.decoder."
        sd = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        info = WeightsInfo(source="official", path=o.weights)
        head = official_head(
            o.kind,
            sd,
            "the checkpoint's head",
            b.name,
            o.layers,
            o.depth_range,
            info,
            Path(o.weights).name,
            **b.overrides,
        )
    if head.num_outputs != output.head_channels:
        what = "classes" if output.is_map_of_classes else "output channels"
        raise DensekitError(
            f"model.official_head {o.weights}: the head outputs {head.num_outputs} {what}, the "
            f"task {output.task} {output.head_channels} (set the task's num_classes to "
            f"{head.num_outputs})"
        )
    seen = len(b.bands) if b.bands else config.in_channels
    backbone = load_backbone(
        b.name, b.weights, layers=head.layers, in_chans=seen if seen != 3 else None, **b.overrides
    )
    return ModelParts(inputs=_inputs(config, backbone), backbone=backbone, head=head)


def _inputs(config: ModelConfig, backbone: Backbone | None) -> InputSpec:
    """The input normalisation: the given statistics or the backbone's own (a U-Net needs
    statistics or a scale)."""
    n = config.in_channels
    if backbone is None:
        if config.mean is None and config.scale is None:
            raise DensekitError(
                "the U-Net needs input statistics: give mean/std (data units) or scale"
            )
        mean = list(config.mean or [0.0] * n)
        std = list(config.std or [1.0] * n)
    else:
        mean, std = input_statistics(
            config.mean, config.std, config.scale, n, backbone, config.backbone.bands
        )
    return InputSpec(
        channels=n,
        images=config.images,
        bands=config.bands,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        scale=1.0 if config.scale is None else float(config.scale),
    )
