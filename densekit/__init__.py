"""densekit: dense predictions from frozen DINO features for remote sensing and medical imaging."""

from __future__ import annotations

from densekit.backbones import Backbone, load_backbone
from densekit.version import __version__

__all__ = ["Backbone", "__version__", "load_backbone"]
