"""Light heads trained on frozen backbone features: linear, DPT, head grids, change fusion,
depth output, and the pixel-detail decoder."""

from densekit.heads.change import ChangeFusion
from densekit.heads.depth import DepthOutput
from densekit.heads.dpt import DPTHead
from densekit.heads.grid import GridPoint, HeadGrid
from densekit.heads.linear import LinearHead

__all__ = ["ChangeFusion", "DPTHead", "DepthOutput", "GridPoint", "HeadGrid", "LinearHead"]
