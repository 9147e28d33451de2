"""Frozen DINO backbones: the registry, exact weight loading and multi-layer features.

The registry (:mod:`densekit.backbones.registry`) is plain data; the rest needs torch and timm
and is imported on first use, so listing the backbones stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from densekit.backbones.registry import (
    ALIASES,
    NORMALIZATIONS,
    REGISTRY,
    BackboneName,
    BackboneSpec,
    Normalization,
    get_spec,
)

if TYPE_CHECKING:
    from densekit.backbones.base import Backbone, WeightsInfo, crop_to_image, pad_to_multiple
    from densekit.backbones.load import load_backbone

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


def __getattr__(name: str) -> Any:
    if name in ("Backbone", "WeightsInfo", "crop_to_image", "pad_to_multiple"):
        from densekit.backbones import base

        return getattr(base, name)
    if name == "load_backbone":
        from densekit.backbones.load import load_backbone

        return load_backbone
    raise AttributeError(f"module 'densekit.backbones' has no attribute {name!r}")
