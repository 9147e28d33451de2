"""Frozen DINO backbones: the registry, exact weight loading and multi-layer features."""

from densekit.backbones.base import Backbone, WeightsInfo, crop_to_image, pad_to_multiple
from densekit.backbones.load import load_backbone
from densekit.backbones.registry import (
    ALIASES,
    NORMALIZATIONS,
    REGISTRY,
    BackboneName,
    BackboneSpec,
    Normalization,
    get_spec,
)

__all__ = [
    "ALIASES",
    "NORMALIZATIONS",
    "REGISTRY",
    "Backbone",
    "BackboneName",
    "BackboneSpec",
    "Normalization",
    "WeightsInfo",
    "crop_to_image",
    "get_spec",
    "load_backbone",
    "pad_to_multiple",
]
