"""A trained model ready for inference: :func:`load_trained` reads a checkpoint once and keeps
the model with everything inference needs to know about it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from densekit.data.band_layout import BandLayout
from densekit.errors import DensekitError
from densekit.inference.plan import PRECISIONS
from densekit.models import DenseModel, InputSpec, OutputSpec
from densekit.models.checkpoint import read_checkpoint
from densekit.models.inputs import backbone_side


@dataclass
class Trained:
    """A model and what inference needs to know about it.

    Args:
        model: raw images ``(B, C, H, W)`` (one per date) -> raw outputs ``(B, K, H, W)``; a
            :class:`~densekit.models.DenseModel`, or any module with the same contract.
        output: what the outputs are (:class:`~densekit.models.OutputSpec`).
        inputs: the bands it takes (:class:`~densekit.models.InputSpec`).
        patch: tile sides are rounded down to a multiple of this (the backbone's patch).
        upscale: the factor the backbone sees each input resized by (``input_upscale``).
        checkpoint, checkpoint_sha256: the file it was read from, if any.
        task: the name of the task that trained it.
        data: the training data module's hyper-parameters (a slice model's plane, context,
            intensity and classes; empty when none were saved).
        backbone: the backbone's name and weights (source, path, sha256), or None.
        head: the head's kind (``linear``, ``dpt``, ``unet``), for records.
        rasters: the band layout (count, data type, names) of the rasters it was trained on,
            or None where unknown (checkpoints written before densekit recorded it, models in
            memory): inputs are then checked by their band count only.
    """

    model: nn.Module
    output: OutputSpec
    inputs: InputSpec
    patch: int = 32
    upscale: float = 1.0
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    task: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    backbone: dict[str, Any] | None = None
    head: str | None = None
    rasters: BandLayout | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def of(cls, model: DenseModel, **known: Any) -> Trained:
        """A :class:`~densekit.models.DenseModel` in memory (``known``: the other fields)."""
        bb = model.backbone
        return cls(
            model=model,
            output=model.output,
            inputs=model.inputs,
            patch=model.patch_size,
            upscale=model.config.backbone.upscale,
            backbone=None if bb is None else {"name": bb.name, **bb.weights.as_dict()},
            head=model.config.head.kind,
            **known,
        )

    def to(self, device: str | torch.device) -> Trained:
        """Move the model to ``device`` (in place), in eval mode."""
        self.device = torch.device(device)
        self.model = self.model.eval().to(self.device)
        return self

    def backbone_tile(self, tile: int) -> int:
        """The side in pixels of what the backbone sees of a ``tile``-pixel tile (padded to
        its patch): ``tile`` unless the model scales its input (``input_upscale``)."""
        return backbone_side(tile, self.patch, self.upscale)

    def scaling_note(self, tile: int) -> str:
        """What input scaling does to the backbone's share of a tile."""
        side = self.backbone_tile(tile)
        return (
            f"input_upscale {self.upscale:g}: the backbone sees {side} x {side} px per {tile} px "
            f"tile ({(side / tile) ** 2:.1f}x the pixels; lower --batch-size by that factor for "
            "the memory of an unscaled run)"
        )

    @torch.no_grad()
    def __call__(self, *images: Tensor, precision: str = "32") -> Tensor:
        """Raw images (any device) -> raw outputs on the model's device, as float32; under
        bf16 autocast with ``precision`` ``bf16``."""
        if precision not in PRECISIONS:
            raise DensekitError(f"precision {precision!r}: valid values are '32' and 'bf16'")
        xs = [x.to(self.device, non_blocking=True) for x in images]
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if precision == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            return self.model(*xs).float()


def load_trained(checkpoint: str | Path, device: str | torch.device = "cpu") -> Trained:
    """Load a densekit checkpoint of any task, reading the file once (the backbone's weights
    file is checked by its sha256).

    Raises:
        DensekitError: a missing or unreadable file, not a densekit checkpoint, backbone
            weights that changed, or tensors that do not fit.
    """
    ckpt = read_checkpoint(checkpoint)
    model = DenseModel.from_checkpoint_file(ckpt)
    rasters = None
    if ckpt.rasters is not None:
        rasters = BandLayout.from_dict(ckpt.rasters, f"checkpoint {ckpt.path}")
    return Trained.of(
        model,
        checkpoint=ckpt.path,
        checkpoint_sha256=ckpt.sha256,
        task=ckpt.task,
        data=ckpt.data,
        rasters=rasters,
    ).to(device)
