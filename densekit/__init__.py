"""densekit: dense predictions from frozen DINO features for remote sensing and medical imaging."""

from __future__ import annotations

from densekit.backbones import Backbone, load_backbone
from densekit.heads.official import OfficialHead, list_official_heads, load_official_head
from densekit.version import __version__

__all__ = [
    "Backbone",
    "OfficialHead",
    "__version__",
    "list_official_heads",
    "load_backbone",
    "load_official_head",
]
