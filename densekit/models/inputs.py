"""What a model takes: its bands and their normalisation (:class:`InputSpec`), what the backbone
sees of them (``backbone_bands``, ``input_upscale``), and which input pixels its feature grid
covers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from densekit.backbones import Backbone
from densekit.errors import DensekitError


@dataclass(frozen=True)
class InputSpec:
    """The raw bands a model takes and how it normalises them: ``(x * scale - mean) / std``.

    Args:
        channels: bands per image.
        images: images per sample (2 for change detection: two dates on one grid).
        bands: the bands of the training rasters, 1-based indices or names (None: all), so
            inference reads the same ones.
        mean, std: per-band statistics in the data's units after ``scale``.
        scale: multiplies raw values first (e.g. 1/255 for 8-bit data).
    """

    channels: int
    images: int
    bands: tuple[int | str, ...] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DensekitError(
                f"in_channels is {self.channels} but mean/std have {len(self.mean)}/"
                f"{len(self.std)} values"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "images": self.images,
            "bands": None if self.bands is None else list(self.bands),
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": self.scale,
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> InputSpec:
        bands = record.get("bands")
        return cls(
            channels=int(record["channels"]),
            images=int(record["images"]),
            bands=None if bands is None else tuple(bands),
            mean=tuple(float(v) for v in record["mean"]),
            std=tuple(float(v) for v in record["std"]),
            scale=float(record["scale"]),
        )


def input_statistics(
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    scale: float | None,
    in_channels: int,
    backbone: Backbone,
    backbone_bands: Sequence[int] | None,
) -> tuple[list[float], list[float]]:
    """Per-band ``mean`` and ``std`` of the normalisation: given, or the backbone's own."""
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise DensekitError("give both mean and std, or neither")
        return list(mean), list(std)
    if backbone_bands is not None:
        raise DensekitError(
            "model.backbone_bands: give mean and std for every input band (the backbone's own "
            "statistics are per backbone channel, not per input band)"
        )
    norm = backbone.normalization
    if norm is None:
        raise DensekitError(
            f"in_channels {in_channels}: the adapted backbone has no statistics of its "
            "own; give mean and std for every band"
        )
    if scale is None:
        raise DensekitError(
            f"scale is required with {backbone.name}'s own statistics ({norm.name}, for values "
            "in [0, 1]): e.g. 0.00392156862745098 (1/255) for 8-bit data"
        )
    if in_channels != len(norm.mean):
        raise DensekitError(
            f"in_channels {in_channels}: {backbone.name}'s own statistics have "
            f"{len(norm.mean)} bands; give mean and std for every input band"
        )
    return list(norm.mean), list(norm.std)


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


def backbone_side(side: int, patch: int, upscale: float) -> int:
    """The side in pixels of what the backbone sees of a ``side``-pixel input (resized by
    ``upscale``, padded to its patch)."""
    scaled = max(round(side * upscale), 1)
    return scaled + -scaled % patch


def check_upscale(upscale: float) -> None:
    if not (math.isfinite(upscale) and upscale > 0):
        raise DensekitError(f"model.input_upscale must be a finite number > 0, got {upscale}")
