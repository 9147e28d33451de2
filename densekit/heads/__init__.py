"""Light heads trained on frozen backbone features: linear, DPT, head grids, change fusion,
depth output, the pixel-detail decoder, and Meta's released heads (:mod:`densekit.heads.official`).

The modules need torch and are imported on first use, so that listing Meta's released heads
(``densekit heads``) stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from densekit.heads.change import ChangeFusion
    from densekit.heads.depth import DepthOutput
    from densekit.heads.dpt import DPTHead
    from densekit.heads.grid import GridPoint, HeadGrid
    from densekit.heads.linear import LinearHead

__all__ = ["ChangeFusion", "DPTHead", "DepthOutput", "GridPoint", "HeadGrid", "LinearHead"]

_MODULES = {
    "ChangeFusion": "change",
    "DepthOutput": "depth",
    "DPTHead": "dpt",
    "GridPoint": "grid",
    "HeadGrid": "grid",
    "LinearHead": "linear",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        import importlib

        return getattr(importlib.import_module(f"densekit.heads.{_MODULES[name]}"), name)
    raise AttributeError(f"module 'densekit.heads' has no attribute {name!r}")
