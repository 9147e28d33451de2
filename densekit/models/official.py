"""What the outputs of Meta's released heads are: one :class:`~densekit.models.OutputSpec` per
kind, and the task that trains or tests each.

* ``dinov3_chmv2``: canopy height in metres (band ``canopy_height``, unit ``m``);
* ``dinov3_dpt_depth``, ``dinov2_linear_depth``, ``dinov2_dpt_depth``: depth in metres;
* ``dinov3_linear_seg``: class logits, a class map as densekit's own segmentation heads give.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from densekit.errors import DensekitError
from densekit.heads.official import KINDS, RELEASED_HEADS, get_released_head
from densekit.heads.official.registry import ALIASES
from densekit.models.outputs import OutputSpec

TASKS = {"depth": "DepthTask", "segmentation": "SegmentationTask"}


def official_kind(name: str) -> str:
    """The kind of a kind or released name (``dinov3_vitl16_chmv2`` -> ``dinov3_chmv2``)."""
    if name in KINDS:
        return name
    if name in RELEASED_HEADS or name in ALIASES:
        return get_released_head(name).kind
    raise DensekitError(
        f"model.official_head.kind {name!r}: valid kinds are {', '.join(KINDS)}, or a released "
        f"head's name ({', '.join(RELEASED_HEADS)}; aliases {', '.join(ALIASES)})"
    )


def official_kind_of(options: Mapping[str, Any] | None) -> str:
    """The kind named by a task's ``model.official_head`` mapping."""
    if not isinstance(options, Mapping) or "kind" not in options:
        raise DensekitError(
            f"model.official_head {options!r}: head official needs official_head: {{kind: "
            "<kind or released name>, weights: <Meta's head file>}"
        )
    return official_kind(str(options["kind"]))


def official_task(name: str) -> str:
    """``depth`` or ``segmentation``: what a head of this kind predicts."""
    return "segmentation" if KINDS[official_kind(name)].bins is None else "depth"


def official_output(
    name: str, task: str, num_classes: int = 0, class_names: Sequence[str] | None = None
) -> OutputSpec:
    """The output spec of a head of kind (or released name) ``name`` trained or tested by a
    ``task`` (``depth`` or ``segmentation``) task.

    Raises:
        DensekitError: the head predicts something else than the task (the message names the
            task to use).
    """
    kind = official_kind(name)
    predicts = official_task(kind)
    if predicts != task:
        raise DensekitError(
            f"model.official_head.kind {name!r} predicts {predicts}; use "
            f"densekit.tasks.{TASKS[predicts]}, not the {task} task"
        )
    if kind == "dinov3_chmv2":
        return OutputSpec.values("height", None, "canopy_height", "m")
    if predicts == "depth":
        return OutputSpec.values("depth", None, "depth", "m")
    return OutputSpec.segmentation(num_classes, class_names)
