"""Reading a released head file and telling which kind of head it holds.

Files are read with ``torch.load(..., weights_only=True)``. Accepted layouts:

* a flat ``{name: tensor}`` dict (the DINOv3 heads: ``depther.decoder.state_dict()``);
* a dict with the tensors under ``"state_dict"`` or ``"model"`` (the DINOv2 heads hold
  ``{"state_dict": {"decode_head.*": ...}}``); other top-level entries may be metadata, never
  tensors;
* the keys under one common prefix: ``decode_head.`` (DINOv2), ``decoder.`` (a DINOv3
  ``Depther``'s decoder), ``segmentation_model.1.`` (the head of a DINOv3 segmentation model),
  which is removed.

The kind is told from the keys and shapes alone (:func:`identify_kind`):

| keys | kind |
|---|---|
| ``conv.*`` (+ ``batchnorm_layer.*``) | ``dinov3_linear_seg`` |
| ``conv_depth.weight`` (a 1x1 conv) | ``dinov2_linear_depth`` |
| ``conv_depth.head.*`` with 1 output | ``dinov2_dpt_depth`` |
| ``conv_depth.head.*`` with bins, readout, unit biases, no BatchNorm or projection |
``dinov3_chmv2`` |
| ``conv_depth.head.*`` with bins otherwise | ``dinov3_dpt_depth`` |
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from densekit.errors import WeightsError
from densekit.heads.official.dpt import DPTConfig, StateShapes

StateDict = dict[str, torch.Tensor]

WRAPPERS = ("state_dict", "model")
PREFIXES = ("decode_head.", "decoder.", "segmentation_model.1.")
_BACKBONE_KEYS = ("patch_embed.proj.weight", "cls_token", "blocks.0.norm1.weight")


def read_head_file(path: Path) -> StateDict:
    """The head's tensors from ``path``, wrapper and key prefix removed.

    Raises:
        WeightsError: the file is missing, unreadable, holds Python objects other than tensors
            and plain containers, or is not a state dict.
    """
    if not path.is_file():
        raise WeightsError(f"head weights {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        detail = " ".join(str(e).split("Check the documentation")[0].split())
        raise WeightsError(
            f"{path}: cannot read it as a PyTorch checkpoint with weights_only=True (no code "
            f"from the file is run): {detail}"
        ) from None
    return strip_prefix(unwrap(obj, path), path)


def unwrap(loaded: object, path: Path) -> StateDict:
    """The ``{name: tensor}`` dict of a file's top-level object (see the module docstring)."""
    if not isinstance(loaded, dict):
        raise WeightsError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
    obj: dict[Any, Any] = loaded
    for wrapper in WRAPPERS:
        if isinstance(obj.get(wrapper), dict):
            stray = [k for k, v in obj.items() if k != wrapper and isinstance(v, torch.Tensor)]
            if stray:
                raise WeightsError(
                    f"{path}: tensors outside {wrapper!r} that no head has a place for: "
                    f"{stray[:10]}"
                )
            obj = obj[wrapper]
            break
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(
            f"{path}: not a state dict of tensors; other entries: {bad[:10]} (a head file holds "
            f"{{name: tensor}}, or that dict under one of {list(WRAPPERS)})"
        )
    return obj


def strip_prefix(sd: StateDict, path: Path) -> StateDict:
    """Remove a prefix all keys share (``decode_head.``, ...); mixed files are refused."""
    for prefix in PREFIXES:
        inside = [k for k in sd if k.startswith(prefix)]
        if not inside:
            continue
        outside = [k for k in sd if not k.startswith(prefix)]
        if outside:
            raise WeightsError(
                f"{path}: {len(inside)} head tensors under {prefix!r} and {len(outside)} other "
                f"tensors (first: {outside[:5]}); a head file holds the head's tensors only"
            )
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def shapes_of(sd: StateDict) -> StateShapes:
    return {k: tuple(v.shape) for k, v in sd.items()}


def identify_kind(shapes: StateShapes) -> str | None:
    """The kind of head a state dict (prefix removed) looks like, or None (see the table in the
    module docstring)."""
    if "conv_depth.head.4.weight" in shapes:
        if shapes["conv_depth.head.4.weight"][0] == 1:
            return "dinov2_dpt_depth"
        try:
            config = DPTConfig.from_state_dict(shapes, "")
        except WeightsError:
            return "dinov3_dpt_depth"
        chmv2 = config.readout and config.unit_bias and not (config.batchnorm or config.project)
        return "dinov3_chmv2" if chmv2 else "dinov3_dpt_depth"
    if len(shapes.get("conv_depth.weight", ())) == 4:
        return "dinov2_linear_depth"
    if len(shapes.get("conv.weight", ())) == 4:
        return "dinov3_linear_seg"
    return None


def describe_unknown(shapes: StateShapes, path: Path) -> str:
    """Why ``shapes`` is no head file, for the error message."""
    if any(k in shapes for k in _BACKBONE_KEYS):
        return (
            f"{path} holds a backbone (patch_embed/blocks keys), not a head; pass it as "
            "backbone_weights and the head file as head_weights"
        )
    return (
        f"{path}: not an official head state dict (no conv_depth.*, conv_depth.head.* or conv.* "
        f"keys); first keys: {list(shapes)[:8]}"
    )
