"""Lightning tasks: segmentation, depth/height and change detection on one shared base."""

from densekit.tasks.base import DenseTask
from densekit.tasks.change import ChangeDetectionTask
from densekit.tasks.depth import DepthTask
from densekit.tasks.segmentation import SegmentationTask

TASKS: dict[str, type[DenseTask]] = {
    "SegmentationTask": SegmentationTask,
    "DepthTask": DepthTask,
    "ChangeDetectionTask": ChangeDetectionTask,
}

__all__ = ["TASKS", "ChangeDetectionTask", "DenseTask", "DepthTask", "SegmentationTask"]
