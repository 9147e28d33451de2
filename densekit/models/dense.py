"""The trained model as one plain ``nn.Module``: raw bands in, dense outputs out.

:class:`DenseModel` composes

* the input normalisation, ``(x * scale - mean) / std`` per band, NaN (nodata) -> 0 (the mean);
* either a frozen backbone (on the bands it sees, resized by ``input_upscale``; both dates
  fused for change detection), a head on its layers and the upsampling to the input's pixels
  (bilinear, or the pixel-detail decoder), or a U-Net from scratch on all bands (the
  supervised baseline);
* for depth and height, the reading of values from the head (regression or bins).

It runs without Lightning::

    model = DenseModel.from_checkpoint("run.ckpt")
    logits = model(x)          # raw values (B, C, H, W) -> (B, K, H, W)
    labels = model.predict(x)  # the map densekit tile writes for this window

``x`` holds the raw values (no normalisation: the model applies its own) of the bands it was
trained on, in order: ``model.inputs.bands`` says which bands of a raster they are (1-based
indices or names; ``(1, 1, 1)`` is band 1 three times), NaN where a pixel is nodata. A slice
model takes slices already scaled to [0, 1] by the intensity window it was trained with (the
checkpoint's data settings; :mod:`densekit.inference.volume` makes them).

:attr:`DenseModel.output` (an :class:`~densekit.models.outputs.OutputSpec`) says what the
outputs are; :attr:`DenseModel.inputs` (an :class:`~densekit.models.inputs.InputSpec`) what the
model takes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densekit.backbones import Backbone, WeightsInfo
from densekit.errors import DensekitError, InputImageError
from densekit.heads import HeadGrid
from densekit.heads.official import OfficialDecoderHead
from densekit.heads.refine import resample, upsample_to
from densekit.models.build import ModelParts, build_parts
from densekit.models.cache import FeatureCache, model_key
from densekit.models.checkpoint import (
    PREFIX,
    CheckpointFile,
    check_backbone,
    check_backbone_file,
    make_record,
    read_checkpoint,
    task_state,
    write_checkpoint,
)
from densekit.models.config import ModelConfig
from densekit.models.inputs import backbone_input, backbone_side, coverage
from densekit.models.outputs import OutputSpec

if TYPE_CHECKING:
    from densekit.data.band_layout import BandLayout

UNET_MULTIPLE = 32  # the U-Net's input sides are padded to a multiple of this

Features = tuple[list[Tensor], list[Tensor]]


class DenseModel(nn.Module):
    """Raw bands -> dense outputs (see the module docstring).

    Build one with :meth:`build` (from options) or :meth:`from_checkpoint`.

    Args:
        config: the options the parts were built from (recorded in checkpoints).
        output: what the model outputs.
        parts: the modules (:func:`~densekit.models.build.build_parts`).
    """

    input_mean: Tensor
    input_std: Tensor

    def __init__(self, config: ModelConfig, output: OutputSpec, parts: ModelParts) -> None:
        super().__init__()
        self.config = config
        self.output = output
        self.inputs = parts.inputs
        # attribute names are the state-dict keys of checkpoints (see models.checkpoint)
        self.backbone: Backbone | None = parts.backbone
        self.fusion = parts.fusion
        self.head = parts.head
        self.detail = parts.detail
        self.unet = parts.unet
        self.depth_output = parts.depth_output
        spec = parts.inputs
        self.register_buffer(
            "input_mean", torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
        )
        self.register_buffer(
            "input_std", torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
        )
        self.input_scale = spec.scale
        self.feature_cache: FeatureCache | None = None
        self._cache_key: str | None = None

    @classmethod
    def build(cls, config: ModelConfig, output: OutputSpec) -> DenseModel:
        """A new model (the head initialised from torch's random state) with the backbone
        loaded as ``config`` says."""
        return cls(config, output, build_parts(config, output))

    # -- files -------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: Any = "cpu") -> DenseModel:
        """The model of a densekit checkpoint (``densekit fit``, or :meth:`save`), in eval mode.

        The backbone is loaded from the weights the checkpoint names and checked against the
        sha256 it recorded (random backbones are in the checkpoint); every tensor must load.

        Raises:
            DensekitError: a missing or unreadable file, not a densekit checkpoint, backbone
                weights that changed, or tensors that do not fit.
        """
        return cls.from_checkpoint_file(read_checkpoint(path)).to(map_location)

    @classmethod
    def from_checkpoint_file(cls, ckpt: CheckpointFile) -> DenseModel:
        """The model of a checkpoint already read
        (:func:`~densekit.models.checkpoint.read_checkpoint`), on the CPU, in eval mode."""
        check_backbone_file(ckpt)
        model = cls(ckpt.config, ckpt.output, build_parts(ckpt.config, ckpt.output, ckpt.state))
        model.load_checkpoint_state(ckpt.state, ckpt.backbone, f"checkpoint {ckpt.path}")
        if isinstance(model.head, OfficialDecoderHead) and ckpt.official_head is not None:
            rec = ckpt.official_head  # Meta's file, as recorded when the head was imported
            model.head.head_weights = WeightsInfo("official", rec["path"], rec["sha256"])
        return model.eval()

    def save(
        self,
        path: str | Path,
        task: str = "DenseModel",
        data: dict[str, Any] | None = None,
        rasters: BandLayout | None = None,
    ) -> Path:
        """Write the model as a densekit checkpoint that :meth:`from_checkpoint`, ``densekit
        tile`` and ``densekit volume`` read (the frozen backbone is named by its weights and
        sha256, not saved, unless random).

        Args:
            path: the file to write (all or nothing).
            task: the name of the task that trained the model, for the record.
            data: how the training data was made, recorded as the data module's
                hyper-parameters; ``densekit volume`` reads a slice model's ``plane``,
                ``context`` and ``intensity`` from them (e.g. ``{"plane": "axial", "context":
                0, "intensity": {"ct_window": "soft_tissue"}}``), else they must be given to it.
            rasters: the band layout of the training rasters
                (``BandLayout.of("train.tif")``); ``densekit tile`` then refuses rasters whose
                band count, data type or band names differ (without it, only the band count
                can be checked).
        """
        checkpoint: dict[str, Any] = {
            "state_dict": {f"{PREFIX}{k}": v for k, v in self.state_dict().items()}
        }
        if data is not None:
            checkpoint["datamodule_hyper_parameters"] = dict(data)
        self.into_task_checkpoint(checkpoint, task, rasters)
        return write_checkpoint(checkpoint, Path(path))

    def into_task_checkpoint(
        self, checkpoint: dict[str, Any], task: str, rasters: BandLayout | None = None
    ) -> None:
        """Make a Lightning checkpoint of a task holding this model (as ``task.model``) a
        densekit one: add the record (with the training rasters' layout when known), drop the
        frozen backbone's weights (unless random)."""
        checkpoint["densekit"] = self.record(task, rasters)
        self.drop_frozen_weights(checkpoint["state_dict"], prefix=PREFIX)

    def from_task_checkpoint(self, checkpoint: dict[str, Any], task: str) -> None:
        """Before Lightning loads ``checkpoint`` into a task holding this model: check that it
        is a densekit checkpoint of ``task``, bring one of before the redesign into the task's
        layout, check the backbone and put its weights back."""
        meta = checkpoint.get("densekit")
        if meta is None:
            raise DensekitError("not a densekit checkpoint (no 'densekit' record)")
        if meta["task"] != task:
            raise DensekitError(f"the checkpoint is a {meta['task']}, not a {task}")
        task_state(checkpoint)
        self.restore_backbone(
            checkpoint["state_dict"], meta.get("backbone"), "the checkpoint", PREFIX
        )

    def record(self, task: str, rasters: BandLayout | None = None) -> dict[str, Any]:
        """The ``densekit`` record of a checkpoint of this model trained by ``task``."""
        layout = None if rasters is None else rasters.to_dict()
        return make_record(
            task, self.config, self.output, self.inputs, self.backbone, self.head, layout
        )

    def load_checkpoint_state(
        self, state: dict[str, Tensor], recorded_backbone: dict[str, Any] | None, where: str
    ) -> None:
        """Load a checkpoint's ``state`` (DenseModel keys) after checking the backbone."""
        state = dict(state)
        self.restore_backbone(state, recorded_backbone, where)
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise DensekitError(
                f"{where}: the checkpoint's tensors do not fit the model: {e}"
            ) from None

    def restore_backbone(
        self,
        state: dict[str, Any],
        recorded: dict[str, Any] | None,
        where: str,
        prefix: str = "",
    ) -> None:
        """Check the backbone loaded now against the one a checkpoint ``recorded``, and put its
        weights into the checkpoint's ``state`` (they are not saved, unless random)."""
        if self.backbone is None or recorded is None:
            return
        check_backbone(recorded, self.backbone, where)
        if recorded["source"] != "random":
            for key, value in self.backbone.state_dict().items():
                state[f"{prefix}backbone.{key}"] = value

    def drop_frozen_weights(self, state: dict[str, Any], prefix: str = "") -> None:
        """Remove the frozen backbone's tensors from ``state`` (unless random: they cannot be
        recreated from a file)."""
        if self.backbone is not None and self.backbone.weights.source != "random":
            for key in [k for k in state if k.startswith(f"{prefix}backbone.")]:
                del state[key]

    # -- what it takes -----------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        """The multiple the backbone pads inputs to (the U-Net's: 32)."""
        return self.backbone.patch_size if self.backbone is not None else UNET_MULTIPLE

    @property
    def head_grid(self) -> HeadGrid | None:
        return self.head if isinstance(self.head, HeadGrid) else None

    def check_input_shape(self, images: Sequence[Tensor]) -> None:
        """Raise a clear error for inputs the model cannot take (number of images, rank,
        bands, dates on different grids, a side smaller than one patch)."""
        spec = self.inputs
        if len(images) != spec.images:
            raise InputImageError(
                f"the model takes {spec.images} image(s) per sample "
                f"({'two dates' if spec.images == 2 else 'one'}), got {len(images)}"
            )
        for i, x in enumerate(images):
            if x.ndim != 4 or x.shape[1] != spec.channels:
                raise InputImageError(
                    f"image {i}: expected (B, {spec.channels}, H, W) raw bands "
                    f"({list(spec.bands) if spec.bands else 'all bands'} of the training data), "
                    f"got {tuple(x.shape)}"
                )
            if x.shape != images[0].shape:
                raise InputImageError(
                    f"image {i} is {tuple(x.shape)} but image 0 is {tuple(images[0].shape)}: "
                    "the dates must be on one grid"
                )
        h, w = (int(n) for n in images[0].shape[-2:])
        if self.backbone is None:
            return
        p = self.backbone.patch_size
        upscale = self.config.backbone.upscale
        if min(backbone_side(h, 1, upscale), backbone_side(w, 1, upscale)) < p:
            need = math.ceil(p / upscale)
            raise InputImageError(
                f"the input is {h}x{w} pixels; {self.backbone.name} needs at least one "
                f"{p}-pixel patch{f' after input_upscale {upscale:g}' if upscale != 1 else ''}: "
                f"pad it to {max(h, need)}x{max(w, need)} (nodata as NaN) and crop the output"
            )

    # -- the forward -------------------------------------------------------------------------
    def normalize(self, x: Tensor) -> Tensor:
        """``(x * scale - mean) / std``; NaN (nodata, outside the raster) becomes 0, the mean."""
        y = (x * self.input_scale - self.input_mean) / self.input_std
        return torch.nan_to_num(y, nan=0.0)

    def forward(self, *images: Tensor, keys: Sequence[Sequence[str]] | None = None) -> Tensor:
        """Raw images ``(B, C, H, W)`` (two for change detection) -> outputs ``(B, K, H, W)``:
        logits, or values for depth/height.

        ``keys``: feature-cache keys, one sequence per image (date), one key per item; used
        with :attr:`feature_cache` set."""
        return self.forward_all(*images, keys=keys, all_heads=False)[0]

    def forward_all(
        self,
        *images: Tensor,
        keys: Sequence[Sequence[str]] | None = None,
        all_heads: bool = True,
    ) -> list[Tensor]:
        """The outputs of every head of a head grid on one backbone pass (one output for any
        other head, or with ``all_heads`` False: the selected head's)."""
        self.check_input_shape(images)
        size = images[0].shape[-2:]
        xs = [self.normalize(x) for x in images]
        if self.unet is not None:
            return [self.finish(unet_forward(self.unet, torch.cat(xs, dim=1)))]
        if isinstance(self.head, OfficialDecoderHead):
            return [self.official_forward(self.head, xs[0])]
        maps, tokens = self.encode_normalized(xs, keys)
        grid = self.head_grid
        if all_heads and grid is not None:
            return [self.finish(self.upsample(y, size)) for y in grid.forward_all(maps, tokens)]
        return [self.finish(self.decode(maps, tokens, size, xs))]

    def official_forward(self, head: OfficialDecoderHead, x: Tensor) -> Tensor:
        """One of Meta's heads on the normalised ``x``: its values (metres, or class logits)
        on the input's pixels (:meth:`OfficialDecoderHead.in_place`)."""
        if self.backbone is None:
            raise DensekitError("an official head needs its backbone")
        seen = backbone_input(x, self.config.backbone.bands, 1.0)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        y = head(head.features(self.backbone, seen))
        return head.in_place(y, size, self.backbone.patch_size)

    def finish(self, y: Tensor) -> Tensor:
        """Head outputs at full resolution -> the model's outputs (values read from depth
        bins or regression; class logits unchanged)."""
        return self.depth_output(y) if self.depth_output is not None else y

    def encode(
        self, images: Sequence[Tensor], keys: Sequence[Sequence[str]] | None = None
    ) -> Features:
        """Raw images (one per date) -> the maps and class tokens the head reads (both dates
        fused for change detection)."""
        return self.encode_normalized([self.normalize(x) for x in images], keys)

    def encode_normalized(
        self, xs: Sequence[Tensor], keys: Sequence[Sequence[str]] | None
    ) -> Features:
        k = list(keys) if keys is not None else [None] * len(xs)
        b = self.config.backbone
        seen = [backbone_input(x, b.bands, b.upscale) for x in xs]
        if self.fusion is None:
            return self.features(seen[0], k[0])
        (m1, t1), (m2, t2) = self.features(seen[0], k[0]), self.features(seen[1], k[1])
        return self.fusion(m1, m2), self.fusion(t1, t2)

    def features(self, x: Tensor, keys: Sequence[str] | None = None) -> Features:
        """Backbone maps and class tokens of what the backbone sees; with :attr:`feature_cache`
        and a key per item (fixed, unaugmented windows), read from or written to the cache."""
        if self.backbone is None:
            raise DensekitError("the U-Net baseline has no backbone features")
        if self.feature_cache is None or keys is None or len(keys) != x.shape[0]:
            pairs = self.backbone.forward_with_class_tokens(x)
            return [m for m, _ in pairs], [c for _, c in pairs]
        return self.feature_cache.features(
            self.cache_model_key(), keys, x, self.backbone.forward_with_class_tokens
        )

    def cache_model_key(self) -> str:
        """The model side of the feature-cache key (:func:`~densekit.models.cache.model_key`)."""
        if self.backbone is None:
            raise DensekitError("the U-Net baseline has no backbone features to cache")
        if self._cache_key is None:
            b = self.config.backbone
            seen = list(b.bands) if b.bands else list(range(self.inputs.channels))
            self._cache_key = model_key(
                self.backbone,
                self.input_mean[seen],
                self.input_std[seen],
                self.input_scale,
                input_upscale=b.upscale,
                backbone_bands=None if b.bands is None else list(b.bands),
            )
        return self._cache_key

    def upsample(
        self, y: Tensor, size: Sequence[int], images: Sequence[Tensor] | None = None
    ) -> Tensor:
        """Head outputs on the patch grid, upsampled to ``size``; with the pixel-detail options
        guided by, or fused with, the normalised ``images``."""
        if self.backbone is None:
            raise DensekitError("the U-Net baseline has no head on features")
        upscale = self.config.backbone.upscale
        if self.detail is not None:
            if images is None:
                raise DensekitError("the guided upsampler and the pixel branch need the images")
            return self.detail(y, images, coverage(size, self.backbone.patch_size, upscale))
        if upscale == 1:
            return upsample_to(y, size, self.backbone.patch_size)
        return resample(y, size, coverage(size, self.backbone.patch_size, upscale))

    def decode(
        self,
        maps: list[Tensor],
        tokens: list[Tensor],
        size: Sequence[int],
        images: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Head outputs upsampled to ``size`` (``images``: the normalised inputs)."""
        if self.head is None:
            raise DensekitError("the U-Net baseline has no head on features")
        return self.upsample(self.head(maps, tokens), size, images)

    # -- predictions -------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, *images: Tensor) -> np.ndarray:
        """Raw images -> the finished maps ``(B, H, W)`` as ``densekit tile`` writes them:
        labels (uint8) or values (float32), the output's nodata where any input band is NaN."""
        out = self.output.activate(self(*images).float()).cpu().numpy()
        invalid = torch.stack([x.isnan().any(1) for x in images]).any(0).cpu().numpy()
        maps = np.stack([self.output.finish(y) for y in out])
        maps[invalid] = self.output.nodata
        return maps

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer groups of the trainable parameters: each head of a head grid at its own
        learning rate, the rest (any other head, the pixel-detail parts, a U-Net) at ``lr``."""
        grid = self.head_grid
        groups = list(grid.param_groups()) if grid is not None else []
        in_grid = {id(p) for g in groups for p in g["params"]}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in in_grid]
        if rest:
            groups.append({"params": rest, "lr": lr})
        return groups

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters of the head and of each pixel-detail module."""
        sizes = {}
        if self.head is not None:
            sizes["head"] = sum(p.numel() for p in self.head.parameters())
        if self.detail is not None:
            sizes.update(self.detail.parameter_counts())
        return sizes


def unet_forward(unet: nn.Module, x: Tensor) -> Tensor:
    """The U-Net on ``x`` padded to a multiple of 32 (its five poolings), cropped back."""
    h, w = x.shape[-2:]
    x = F.pad(x, (0, -w % UNET_MULTIPLE, 0, -h % UNET_MULTIPLE))
    return unet(x)[..., :h, :w]
