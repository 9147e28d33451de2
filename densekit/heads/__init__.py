"""Light heads trained on frozen backbone features: linear, DPT, change fusion, depth output."""

from densekit.heads.change import ChangeFusion
from densekit.heads.depth import DepthOutput
from densekit.heads.dpt import DPTHead
from densekit.heads.linear import LinearHead, LinearHeadGrid

__all__ = ["ChangeFusion", "DPTHead", "DepthOutput", "LinearHead", "LinearHeadGrid"]
