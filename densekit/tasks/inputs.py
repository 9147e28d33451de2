"""What the model makes of its inputs: the normalisation statistics, what the backbone sees
(``backbone_bands``, ``input_upscale``), which input pixels the feature grid covers, and the
checks of the pixel-detail options (the modules are in :mod:`densekit.heads.refine`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from densekit.backbones import Backbone
from densekit.errors import DensekitError


def input_statistics(hp: Any, backbone: Backbone | None) -> tuple[list[float], list[float]]:
    """Per-band ``mean`` and ``std`` of the normalisation: given, or the backbone's own."""
    if hp.mean is not None or hp.std is not None:
        if hp.mean is None or hp.std is None:
            raise DensekitError("give both mean and std, or neither")
        return list(hp.mean), list(hp.std)
    if hp.get("backbone_bands") is not None:
        raise DensekitError(
            "model.backbone_bands: give mean and std for every input band (the backbone's own "
            "statistics are per backbone channel, not per input band)"
        )
    norm = backbone.normalization if backbone is not None else None
    if norm is None:
        raise DensekitError(
            f"in_channels {hp.in_channels}: the adapted backbone has no statistics of its "
            "own; give mean and std for every band"
        )
    if hp.scale is None:
        raise DensekitError(
            f"scale is required with {hp.backbone}'s own statistics ({norm.name}, for values "
            "in [0, 1]): e.g. 0.00392156862745098 (1/255) for 8-bit data"
        )
    if hp.in_channels != len(norm.mean):
        raise DensekitError(
            f"in_channels {hp.in_channels}: {hp.backbone}'s own statistics have "
            f"{len(norm.mean)} bands; give mean and std for every input band"
        )
    return list(norm.mean), list(norm.std)


def check_detail_options(args: dict[str, Any]) -> None:
    """Reject option values and combinations that cannot work, naming the key."""
    upscale = args["input_upscale"]
    if not (math.isfinite(upscale) and upscale > 0):
        raise DensekitError(f"model.input_upscale must be a finite number > 0, got {upscale}")
    if args["upsampler"] not in ("bilinear", "guided"):
        raise DensekitError(
            f"model.upsampler {args['upsampler']!r}: valid values are 'bilinear' and 'guided'"
        )
    if args["pixel_branch"] < 0 or args["detail_channels"] < 1:
        raise DensekitError(
            f"model.pixel_branch must be >= 0 and detail_channels >= 1, got "
            f"{args['pixel_branch']} and {args['detail_channels']}"
        )
    if args["detail_channels"] != 32 and args["pixel_branch"] == 0:
        raise DensekitError(
            f"model.detail_channels {args['detail_channels']} is used only with a pixel branch; "
            "set pixel_branch too, or leave detail_channels out"
        )
    detail = args["upsampler"] != "bilinear" or args["pixel_branch"] > 0
    options = upscale != 1 or detail or args["backbone_bands"] is not None
    if args["head"] == "unet" and options:
        raise DensekitError(
            "model.input_upscale, upsampler, pixel_branch and backbone_bands apply to the "
            "linear and DPT heads on backbone features, not to the U-Net baseline"
        )
    if args["head_grid"] is not None and detail:
        raise DensekitError(
            "model.head_grid trains plain linear heads: it cannot be combined with "
            "upsampler 'guided' or pixel_branch; train those heads one at a time"
        )
    bands = args["backbone_bands"]
    if bands is not None:
        n = args["in_channels"]
        bad = [b for b in bands if not 0 <= b < n]
        if not bands or bad or len(set(bands)) != len(bands):
            raise DensekitError(
                f"model.backbone_bands {bands}: give distinct positions among the "
                f"{n} input bands (0..{n - 1})"
            )


def backbone_input(x: Tensor, bands: Sequence[int] | None, upscale: float) -> Tensor:
    """A normalised image -> what the backbone sees: the ``bands`` resized by ``upscale``."""
    if bands:
        x = x[:, list(bands)]
    if upscale != 1:
        size = [max(round(n * upscale), 1) for n in x.shape[-2:]]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=upscale < 1)
    return x


def coverage(size: Sequence[int], patch: int, upscale: float) -> tuple[float, float]:
    """Input pixels covered by the feature grid along each axis: the input padded to the patch
    size, or with ``upscale`` the padded resized input in input pixels."""
    out = []
    for n in size:
        scaled = max(round(int(n) * upscale), 1)
        out.append((scaled + -scaled % patch) * int(n) / scaled)
    return out[0], out[1]
