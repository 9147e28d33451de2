"""Meta's released dense heads, loaded exactly on densekit's frozen backbones.

:func:`load_official_head` reads a head file as Meta publishes it (DINOv3 CHMv2 canopy height,
DINOv3 DPT depth, DINOv3 linear segmentation, DINOv2 linear and DPT depth) and returns an
:class:`OfficialHead` whose output matches Meta's modules (in float32). The released heads are
listed by :func:`list_official_heads`. The kinds and the released table are plain data; the
modules that need torch are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from densekit.heads.official.kinds import KINDS, HeadKind, KindSpec, get_kind
from densekit.heads.official.registry import (
    ALIASES,
    RELEASED_HEADS,
    ReleasedHead,
    ReleasedHeadName,
    get_released_head,
    list_official_heads,
)

if TYPE_CHECKING:
    from densekit.heads.official.head import OfficialDecoderHead
    from densekit.heads.official.load import load_head_file, load_official_head, official_head
    from densekit.heads.official.model import OfficialHead

__all__ = [
    "ALIASES",
    "KINDS",
    "RELEASED_HEADS",
    "HeadKind",
    "KindSpec",
    "OfficialDecoderHead",
    "OfficialHead",
    "ReleasedHead",
    "ReleasedHeadName",
    "get_kind",
    "get_released_head",
    "list_official_heads",
    "load_head_file",
    "load_official_head",
    "official_head",
]

_MODULES = {
    "OfficialDecoderHead": "head",
    "OfficialHead": "model",
    "load_head_file": "load",
    "load_official_head": "load",
    "official_head": "load",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        import importlib

        module = importlib.import_module(f"densekit.heads.official.{_MODULES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'densekit.heads.official' has no attribute {name!r}")
