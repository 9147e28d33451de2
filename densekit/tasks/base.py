"""The shared base of the training tasks: a frozen backbone, a light head, one step function.

What every task does the same way:

* input normalisation inside the model, ``(x * scale - mean) / std`` per band, stored with the
  checkpoint (the data modules hand over raw values);
* the backbone loaded with :func:`densekit.load_backbone`, frozen (eval, no grad, not in the
  optimizer) and not saved in checkpoints: a checkpoint names its weights file and sha256,
  checked when the checkpoint is loaded (random backbones, which cannot be recreated, are saved);
* the head (``"linear"``, ``"dpt"``) on the backbone's layers, or ``"unet"``: a
  segmentation-models-pytorch U-Net trained from scratch on all input bands, the supervised
  baseline, chosen by this one switch;
* predictions upsampled bilinearly to the input size (the patch padding cropped away), or with
  the options for pixel detail (:mod:`densekit.heads.refine`): the backbone on the image resized
  by ``input_upscale``, an image-guided upsampler, a pixel branch on all input bands;
* AdamW with a linear warm-up then cosine, polynomial (power 0.9) or constant learning rate;
* one ``_shared_step(batch, stage)`` for training, validation and testing; metrics logged each
  epoch, and test metrics also written to ``test_metrics.json`` in the run folder.
"""

from __future__ import annotations

import abc
import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from densekit.backbones import Backbone, load_backbone
from densekit.errors import DensekitError
from densekit.heads import DPTHead, LinearHead, LinearHeadGrid
from densekit.heads.refine import DetailDecoder, resample, upsample_to
from densekit.tasks.cache import FeatureCache, model_key
from densekit.tasks.checkpoint import check_record, check_task_file, provenance, save_record
from densekit.tasks.grid import (
    GridPoint,
    check_validation,
    grid_points,
    grid_record,
    grid_step,
    param_groups,
    select_best,
)
from densekit.tasks.inputs import (
    backbone_input,
    check_detail_options,
    coverage,
    input_statistics,
)

HeadName = Literal["linear", "dpt", "unet"]
LayerChoice = Literal["last", "last4", "dpt"] | list[int]


class DenseTask(L.LightningModule, abc.ABC):
    """Common arguments of every task.

    Args:
        backbone: registry name (``densekit backbones``); unused with ``head="unet"``.
        weights: the backbone's weights (see :func:`densekit.load_backbone`): a file, a folder,
            ``"official"`` (online) or ``"random"``. Required unless ``head="unet"``.
        backbone_overrides: architecture overrides for small or custom backbones.
        layers: ``"last"``, ``"last4"``, ``"dpt"`` or block indices fed to the head.
        head: ``"linear"``, ``"dpt"`` or ``"unet"`` (baseline from scratch, no backbone).
        dropout: dropout of the linear head.
        dpt_features: channels of the DPT fusion blocks.
        unet_encoder: segmentation-models-pytorch encoder of the U-Net (random init).
        in_channels: input bands. Other than the backbone's 3, the patch embedding is adapted
            (explicit opt-in, see ``load_backbone(in_chans=...)``) and ``mean``/``std`` are needed.
        bands: the bands used, recorded for inference (the data module selects them).
        mean, std: per-band statistics in the data's units (after ``scale``); default: the
            backbone's own statistics.
        scale: multiplies raw values first (e.g. 1/255 for 8-bit data); required when the
            backbone's statistics are used, 1 otherwise.
        lr, weight_decay: AdamW settings.
        warmup_steps: linear warm-up length in optimizer steps.
        schedule: decay after the warm-up.
        feature_cache: a folder for the frozen backbone's features of fixed, unaugmented
            windows (validation, test, grid training windows without ``augment``): computed
            once, then read back in later epochs and runs (see :mod:`densekit.tasks.cache`).
        feature_cache_gb: the cache folder's size limit (least recently used entries go).
        head_grid: train several linear heads on one backbone pass, e.g. ``{lr: [1e-4, 1e-3,
            1e-2], layers: [last, last4]}``, and use the best on validation (``metric``, default
            the task's main metric); see :mod:`densekit.tasks.grid`.
        backbone_bands: positions (0-based, among the input bands) of the bands the backbone
            sees, e.g. ``[3, 2, 1]`` for B4, B3, B2 of 13 Sentinel-2 bands; default all. The
            pixel branch and the guided upsampler always see every band.
        input_upscale: the backbone runs on the image resized by this factor, so a patch covers
            ``patch / input_upscale`` input pixels (e.g. 2-4 for 10 m Sentinel-2; cost grows
            with its square, attention with its fourth power).
        upsampler: ``"bilinear"``, or ``"guided"``: a learned joint bilateral upsampler guided by
            the input bands (:class:`densekit.heads.refine.GuidedUpsampler`).
        pixel_branch: channels of a small convolutional stem on the full-resolution bands, fused
            with the upsampled head output (0: off); the head then outputs ``detail_channels``.
        detail_channels: the head's output channels when a pixel branch is fused.
    """

    kind: ClassVar[str]
    main_metric: ClassVar[str]  # the validation metric that ranks runs and grid heads
    input_mean: Tensor
    input_std: Tensor
    metrics: nn.ModuleDict
    loss_fn: nn.Module
    fusion: Any  # ChangeFusion, set by the change task

    def __init__(
        self,
        backbone: str = "dinov2_vits14",
        weights: str | None = None,
        backbone_overrides: dict[str, Any] | None = None,
        layers: LayerChoice = "last",
        head: HeadName = "linear",
        dropout: float = 0.0,
        dpt_features: int = 256,
        unet_encoder: str = "resnet34",
        in_channels: int = 3,
        bands: list[int | str] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        scale: float | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_steps: int = 0,
        schedule: Literal["cosine", "poly", "constant"] = "cosine",
        feature_cache: str | None = None,
        feature_cache_gb: float = 20.0,
        head_grid: dict[str, Any] | None = None,
        backbone_bands: list[int] | None = None,
        input_upscale: float = 1.0,
        upsampler: Literal["bilinear", "guided"] = "bilinear",
        pixel_branch: int = 0,
        detail_channels: int = 32,
    ) -> None:
        super().__init__()
        if weights is not None and Path(weights).expanduser().exists():
            weights = str(Path(weights).expanduser().resolve())  # checkpoints work from any folder
        if head_grid is not None and head != "linear":
            raise DensekitError(f"model.head_grid trains linear heads; head is {head!r}")
        check_detail_options(locals())
        self.save_hyperparameters()
        self.grid: list[GridPoint] = []
        self.grid_scores: dict[str, float] = {}
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()
        for k in range(len(self.grid)):
            self.metrics[f"m_val_g{k}"] = copy.deepcopy(self.metrics["m_val"])

    @property
    def hp(self) -> Any:
        """The hyper-parameters (an attribute dict of the ``__init__`` arguments)."""
        return self.hparams

    def metric(self, stage: str) -> Any:
        """The metric object of ``stage`` (``train``, ``val`` or ``test``)."""
        return self.metrics[f"m_{stage}"]

    # -- building ----------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def num_outputs(self) -> int:
        """Output channels of the head."""

    @property
    def input_images(self) -> int:
        """Images per sample the model sees (2 for change detection)."""
        return 1

    def head_kind(self) -> Literal["segmentation", "depth"]:
        return "segmentation"

    def configure_models(self) -> None:
        hp = self.hp
        self.backbone: Backbone | None = None
        self.detail: DetailDecoder | None = None
        if hp.head == "unet":
            self.unet = smp.Unet(
                encoder_name=hp.unet_encoder,
                encoder_weights=None,
                in_channels=hp.in_channels * self.input_images,
                classes=self.num_outputs,
            )
            mean, std = hp.mean, hp.std
            if mean is None and hp.scale is None:
                raise DensekitError(
                    "the U-Net needs input statistics: give mean/std (data units) or scale"
                )
            mean = mean or [0.0] * hp.in_channels
            std = std or [1.0] * hp.in_channels
        else:
            if hp.weights is None:
                raise DensekitError(
                    f"model.weights is required for the {hp.head} head on {hp.backbone}: a "
                    "weights file, 'official' (online) or 'random'"
                )
            seen = len(hp.backbone_bands) if hp.backbone_bands else hp.in_channels
            self.backbone = load_backbone(
                hp.backbone,
                hp.weights,
                layers=hp.layers,
                in_chans=seen if seen != 3 else None,
                **(hp.backbone_overrides or {}),
            )
            mean, std = input_statistics(hp, self.backbone)
            channels = self.backbone.out_channels
            outputs = hp.detail_channels if hp.pixel_branch > 0 else self.num_outputs
            if self.input_images == 2:
                channels = self.fusion.out_channels(channels)
            if hp.head_grid is not None:
                self.grid = grid_points(hp.head_grid, len(channels), hp.layers)
                self.head: nn.Module = LinearHeadGrid(
                    channels, self.num_outputs, [p.positions for p in self.grid], hp.dropout
                )
            elif hp.head == "linear":
                self.head = LinearHead(channels, outputs, dropout=hp.dropout)
            else:
                self.head = DPTHead(
                    channels,
                    self.backbone.strides,
                    outputs,
                    kind=self.head_kind(),
                    features=hp.dpt_features,
                    readout="project" if self.backbone.spec.is_vit else "ignore",
                )
            if hp.upsampler != "bilinear" or hp.pixel_branch > 0:
                self.detail = DetailDecoder(
                    hp.in_channels,
                    self.input_images,
                    outputs,
                    self.num_outputs,
                    hp.upsampler,
                    hp.pixel_branch,
                )
        if len(mean) != hp.in_channels or len(std) != hp.in_channels:
            raise DensekitError(
                f"in_channels is {hp.in_channels} but mean/std have {len(mean)}/{len(std)} values"
            )
        self.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))
        self.input_scale = 1.0 if hp.scale is None else float(hp.scale)

    def detail_parameters(self) -> dict[str, int]:
        """Trainable parameters of the head and of each pixel-detail module."""
        sizes = {"head": sum(p.numel() for p in self.head.parameters())} if self.backbone else {}
        return {**sizes, **(self.detail.parameter_counts() if self.detail is not None else {})}

    def on_fit_start(self) -> None:
        if self.detail is not None:
            sizes = ", ".join(f"{k} {v:,}" for k, v in self.detail_parameters().items())
            rank_zero_info(f"trainable parameters: {sizes}")

    @abc.abstractmethod
    def configure_losses(self) -> None:
        """Build ``self.loss_fn``."""

    @abc.abstractmethod
    def configure_metrics(self) -> None:
        """Build the metric objects of each stage."""

    # -- the model ---------------------------------------------------------------------------
    def normalize(self, x: Tensor) -> Tensor:
        """``(x * scale - mean) / std``; NaN (nodata, outside the raster) becomes 0, the mean."""
        y = (x * self.input_scale - self.input_mean) / self.input_std
        return torch.nan_to_num(y, nan=0.0)

    def _unet_forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % 32, 0, -h % 32))
        return self.unet(x)[..., :h, :w]

    def features(
        self, x: Tensor, keys: Sequence[str] | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Backbone maps and class tokens of a normalised image batch; with ``feature_cache``
        and a key per item (fixed, unaugmented windows), read from or written to the cache."""
        if self.backbone is None:
            raise DensekitError("the U-Net baseline has no backbone features")
        cache = self._feature_cache()
        if cache is None or keys is None or len(keys) != x.shape[0]:
            pairs = self.backbone.forward_with_class_tokens(x)
            return [m for m, _ in pairs], [c for _, c in pairs]
        return cache.features(
            self._cache_model_key, keys, x, self.backbone.forward_with_class_tokens
        )

    def _feature_cache(self) -> FeatureCache | None:
        if self.hp.get("feature_cache") is None or self.backbone is None:
            return None
        if getattr(self, "_cache", None) is None:
            self._cache = FeatureCache(self.hp.feature_cache, self.hp.feature_cache_gb)
            seen = self.hp.backbone_bands or list(range(self.hp.in_channels))
            self._cache_model_key = model_key(
                self.backbone,
                self.input_mean[seen],
                self.input_std[seen],
                self.input_scale,
                input_upscale=self.hp.input_upscale,
                backbone_bands=self.hp.backbone_bands,
            )
        return self._cache

    def upsample(
        self, y: Tensor, size: Sequence[int], images: Sequence[Tensor] | None = None
    ) -> Tensor:
        """Head outputs on the patch grid, upsampled to ``size``; with the pixel-detail options
        guided by, or fused with, the normalised ``images``."""
        if self.backbone is None:
            raise DensekitError("the U-Net baseline has no head on features")
        if self.detail is not None:
            if images is None:
                raise DensekitError("the guided upsampler and the pixel branch need the images")
            return self.detail(
                y, images, coverage(size, self.backbone.patch_size, self.hp.input_upscale)
            )
        if self.hp.input_upscale == 1:
            return upsample_to(y, size, self.backbone.patch_size)
        return resample(y, size, coverage(size, self.backbone.patch_size, self.hp.input_upscale))

    def decode(
        self,
        maps: list[Tensor],
        tokens: list[Tensor],
        size: Sequence[int],
        images: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Head outputs upsampled to ``size`` (``images``: the normalised inputs)."""
        return self.upsample(self.head(maps, tokens), size, images)

    def encode(
        self, images: Sequence[Tensor], keys: Sequence[Sequence[str]] | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Raw images (one per date) -> the maps and class tokens the head reads (both dates
        fused for change detection)."""
        return self._encode([self.normalize(x) for x in images], keys)

    def _encode(
        self, xs: Sequence[Tensor], keys: Sequence[Sequence[str]] | None
    ) -> tuple[list[Tensor], list[Tensor]]:
        k = list(keys) if keys is not None else [None] * len(xs)
        hp = self.hp
        seen = [backbone_input(x, hp.backbone_bands, hp.input_upscale) for x in xs]
        if len(xs) == 1:
            return self.features(seen[0], k[0])
        (m1, t1), (m2, t2) = self.features(seen[0], k[0]), self.features(seen[1], k[1])
        return self.fusion(m1, m2), self.fusion(t1, t2)

    def forward(self, *images: Tensor, keys: Sequence[Sequence[str]] | None = None) -> Tensor:
        """Raw images ``(B, C, H, W)`` -> head outputs ``(B, K, H, W)`` (logits or depth).

        ``keys``: feature-cache keys, one sequence per image (date), one key per item."""
        size = images[0].shape[-2:]
        xs = [self.normalize(x) for x in images]
        if self.backbone is None:
            return self.postprocess(self._unet_forward(torch.cat(xs, dim=1)))
        maps, tokens = self._encode(xs, keys)
        return self.postprocess(self.decode(maps, tokens, size, xs))

    def postprocess(self, y: Tensor) -> Tensor:
        return y

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Lightning's loader, after checking that the checkpoint is one of this task."""
        check_task_file(cls, DenseTask, checkpoint_path)
        kwargs.setdefault("weights_only", True)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        kind = getattr(dm, "kind", None)
        if kind is not None and kind != self.kind:
            raise DensekitError(
                f"a {type(self).__name__} (from the config or the checkpoint) cannot use a "
                f"{type(dm).__name__}: the model and the data must be of the same task"
            )
        if stage == "fit" and self.grid:
            check_validation(dm)

    # -- steps -------------------------------------------------------------------------------
    @abc.abstractmethod
    def inputs(self, batch: dict[str, Any]) -> tuple[Tensor, ...]:
        """The images of a batch."""

    @abc.abstractmethod
    def target(self, batch: dict[str, Any]) -> Tensor:
        """The target of a batch, checked."""

    @abc.abstractmethod
    def update_metrics(self, output: Tensor, target: Tensor, stage: str) -> None: ...

    @abc.abstractmethod
    def compute_metrics(self, stage: str) -> dict[str, float]: ...

    def _shared_step(self, batch: dict[str, Any], stage: str) -> Tensor:
        if self.grid and stage != "test":
            return grid_step(self, batch, stage)
        target = self.target(batch)
        output = self(*self.inputs(batch), keys=batch.get("cache_keys"))
        loss = self.loss_fn(output, target)
        if not torch.isfinite(loss):
            raise DensekitError(f"{stage} loss is {loss.item()} on {batch.get('path')}")
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            batch_size=output.shape[0],
            sync_dist=stage != "train",
            prog_bar=stage == "train",
        )
        self.update_metrics(output.detach(), target, stage)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def _epoch_end(self, stage: str) -> dict[str, float]:
        scores = self.compute_metrics(stage)
        finite = {f"{stage}/{k}": v for k, v in scores.items() if math.isfinite(v)}
        self.log_dict(finite, sync_dist=False)
        return scores

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        if not self.grid:
            self._epoch_end("val")
            return
        scores = select_best(self)  # the grid's best head becomes the selected one
        self.log_dict({f"val/{k}": v for k, v in scores.items() if math.isfinite(v)})

    def on_test_epoch_end(self) -> None:
        scores = self._epoch_end("test")
        if self.trainer.is_global_zero:
            folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            folder.mkdir(parents=True, exist_ok=True)
            record = {"task": type(self).__name__, "metrics": scores, **self._provenance()}
            if self.grid:
                record["head_grid"] = grid_record(self)
            (folder / "test_metrics.json").write_text(json.dumps(record, indent=2) + "\n")

    # -- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hp
        params: Any = [p for p in self.parameters() if p.requires_grad]
        if self.grid:
            params = param_groups(self)  # one learning rate per grid head
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        steps = float(self.trainer.estimated_stepping_batches)
        if not math.isfinite(steps) and hp.schedule != "constant":
            raise DensekitError(
                f"model.schedule {hp.schedule!r} decays over the run's steps, but this run has no "
                "step count (trainer.max_epochs -1 and no trainer.max_steps; trainer.max_time "
                "does not give one): set trainer.max_steps or trainer.max_epochs, or use "
                "schedule: constant"
            )
        total = max(int(steps), 1) if math.isfinite(steps) else hp.warmup_steps
        warmup = min(hp.warmup_steps, total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            if hp.schedule == "cosine":
                return 0.5 * (1 + math.cos(math.pi * progress))
            if hp.schedule == "poly":
                return (1 - progress) ** 0.9
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # -- checkpoints -------------------------------------------------------------------------
    def _provenance(self) -> dict[str, Any]:
        return provenance(self.backbone)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_record(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_record(self, checkpoint)
