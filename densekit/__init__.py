"""densekit: dense predictions from frozen DINO features for remote sensing and medical imaging.

The names below are imported on first use, so ``import densekit`` (and the ``densekit``
command's start) does not load torch until something needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from densekit.version import __version__

if TYPE_CHECKING:
    from densekit.backbones import Backbone, load_backbone
    from densekit.heads.official import OfficialHead, list_official_heads, load_official_head

__all__ = [
    "Backbone",
    "OfficialHead",
    "__version__",
    "list_official_heads",
    "load_backbone",
    "load_official_head",
]


def __getattr__(name: str) -> Any:
    if name in ("Backbone", "load_backbone"):
        from densekit import backbones

        return getattr(backbones, name)
    if name in ("OfficialHead", "list_official_heads", "load_official_head"):
        from densekit.heads import official

        return getattr(official, name)
    raise AttributeError(f"module 'densekit' has no attribute {name!r}")
