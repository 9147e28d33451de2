"""What a densekit checkpoint records about its backbone, and the checks when it is loaded.

A checkpoint names the backbone's weights file and its sha256 instead of holding the frozen
weights (random backbones, which cannot be recreated, are saved); loading checks that the file
given now is the same one.
"""

from __future__ import annotations

from typing import Any

import torch

from densekit import __version__
from densekit.backbones import Backbone
from densekit.errors import DensekitError


def provenance(backbone: Backbone | None) -> dict[str, Any]:
    """The backbone record of checkpoints and metric files."""
    if backbone is None:
        return {"backbone": None, "densekit_version": __version__}
    w = backbone.weights
    return {
        "backbone": {"name": backbone.name, "source": w.source, "path": w.path, "sha256": w.sha256},
        "densekit_version": __version__,
    }


def check_task_file(cls: type, base: type, path: Any) -> None:
    """``path`` is a densekit checkpoint of the task ``cls`` (any task when ``cls`` is ``base``)."""
    meta = torch.load(path, map_location="cpu", weights_only=True).get("densekit")
    if meta is None:
        raise DensekitError(f"{path}: not a densekit checkpoint")
    if cls is not base and meta["task"] != cls.__name__:
        raise DensekitError(f"{path}: the checkpoint is a {meta['task']}, not a {cls.__name__}")


def save_record(task: Any, checkpoint: dict[str, Any]) -> None:
    """Add the record and drop the frozen backbone's weights (unless random)."""
    checkpoint["densekit"] = {"task": type(task).__name__, **provenance(task.backbone)}
    if task.backbone is not None and task.backbone.weights.source != "random":
        sd = checkpoint["state_dict"]
        for key in [k for k in sd if k.startswith("backbone.")]:
            del sd[key]


def check_record(task: Any, checkpoint: dict[str, Any]) -> None:
    """Check the record against ``task`` and put the backbone's weights back."""
    meta = checkpoint.get("densekit")
    if meta is None:
        raise DensekitError("not a densekit checkpoint (no 'densekit' record)")
    if meta["task"] != type(task).__name__:
        raise DensekitError(f"the checkpoint is a {meta['task']}, not a {type(task).__name__}")
    recorded = meta.get("backbone")
    backbone = task.backbone
    if backbone is None or recorded is None:
        return
    sd = checkpoint["state_dict"]
    if recorded["source"] == "random":
        if backbone.weights.source != "random":
            raise DensekitError(
                "the checkpoint was trained on a random backbone (saved in the checkpoint); "
                "load it with weights='random', not with another weights file"
            )
        return
    if recorded["sha256"] != backbone.weights.sha256:
        raise DensekitError(
            f"the checkpoint was trained on backbone weights {recorded['path']} (sha256 "
            f"{recorded['sha256']}), but {backbone.weights.path} has sha256 "
            f"{backbone.weights.sha256}: the file changed or is another one"
        )
    for key, value in backbone.state_dict().items():
        sd[f"backbone.{key}"] = value
