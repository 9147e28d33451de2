"""densekit: dense predictions from frozen DINO features for remote sensing and medical imaging."""

from __future__ import annotations

__version__ = "0.1.0"

from densekit.backbones import Backbone, load_backbone

__all__ = ["Backbone", "__version__", "load_backbone"]
