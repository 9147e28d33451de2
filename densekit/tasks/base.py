"""The shared base of the training tasks: a :class:`~densekit.models.DenseModel`, a loss, metrics
and one step function.

What every task does the same way:

* the model (:mod:`densekit.models`) built from the task's flat ``model.init_args``: input
  normalisation inside it (checkpoints carry it), the frozen backbone (eval, no grad, not in the
  optimizer, not saved in checkpoints: a checkpoint names its weights file and sha256, checked
  on loading; random backbones, which cannot be recreated, are saved), a linear, DPT or U-Net
  head, the pixel-detail options;
* AdamW with a linear warm-up then cosine, polynomial (power 0.9) or constant learning rate
  (:mod:`densekit.schedules`);
* one ``_shared_step(batch, stage)`` for training, validation and testing, for one head or a
  head grid (every head of the grid on one backbone pass, :mod:`densekit.heads.grid`); metrics
  logged each epoch, and test metrics also written to ``test_metrics.json`` in the run folder.
"""

from __future__ import annotations

import abc
import copy
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from densekit.data.base import DenseDataModule
from densekit.errors import DensekitError
from densekit.heads.official import OfficialDecoderHead
from densekit.models import DenseModel, ModelConfig, OutputSpec
from densekit.models.cache import FeatureCache
from densekit.models.checkpoint import provenance, read_task_name
from densekit.models.config import HeadName, LayerChoice, Upsampler, absolute_weights
from densekit.schedules import Decay, step_schedule
from densekit.tasks.random_state import RANDOM_STATE, capture_random_state, restore_random_state


class DenseTask(L.LightningModule, abc.ABC):
    """Common arguments of every task (the model's options, see :mod:`densekit.models.config`,
    and how it is trained).

    Args:
        backbone: registry name (``densekit backbones``); unused with ``head="unet"``.
        weights: the backbone's weights (see :func:`densekit.load_backbone`): a file, a folder,
            ``"official"`` (online), ``"bundled"`` or ``"random"``. Required unless ``head="unet"``.
        backbone_overrides: architecture overrides for small or custom backbones.
        layers: ``"last"``, ``"last4"``, ``"dpt"`` or block indices fed to the head.
        head: ``"linear"``, ``"dpt"``, ``"unet"`` (baseline from scratch, no backbone) or
            ``"official"`` (one of Meta's released heads, ``official_head``).
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
            once, then read back in later epochs and runs (see :mod:`densekit.models.cache`).
        feature_cache_gb: the cache folder's size limit (least recently used entries go).
        head_grid: train several linear heads on one backbone pass, e.g. ``{lr: [1e-4, 1e-3,
            1e-2], layers: [last, last4]}``, and use the best on validation (``metric``, default
            the task's main metric); see :mod:`densekit.heads.grid`.
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
        official_head: with ``head: official``, Meta's released head to test or fine-tune
            (initialised from Meta's weights): ``{kind, weights}`` (the head file) and
            optionally ``layers`` and ``depth_range`` (see :func:`densekit.load_official_head`);
            ``backbone`` and ``weights`` name the backbone it was trained on.
    """

    kind: ClassVar[str]  # the data a task trains on (data modules have the same attribute)
    main_metric: ClassVar[str]  # the validation metric that ranks runs and grid heads
    images: ClassVar[int] = 1  # images per sample (2 for change detection)
    metrics: nn.ModuleDict
    loss_fn: nn.Module

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
        schedule: Decay = "cosine",
        feature_cache: str | None = None,
        feature_cache_gb: float = 20.0,
        head_grid: dict[str, Any] | None = None,
        backbone_bands: list[int] | None = None,
        input_upscale: float = 1.0,
        upsampler: Upsampler = "bilinear",
        pixel_branch: int = 0,
        detail_channels: int = 32,
        official_head: dict[str, Any] | None = None,
    ) -> None:
        check_training_options(lr, weight_decay, warmup_steps, dropout, head_grid)
        super().__init__()
        weights = absolute_weights(weights)  # saved absolute: checkpoints work from any folder
        self.save_hyperparameters()
        args = dict(self.hparams)
        if head_grid is not None:
            args["head_grid"] = {**head_grid, "metric": head_grid.get("metric") or self.main_metric}
        config = ModelConfig.from_args(args, images=self.images)
        self.model = DenseModel.build(config, self.output_spec())
        if feature_cache is not None and head == "official":
            raise DensekitError(
                "model.feature_cache: Meta's released heads take their own layers of the "
                "backbone; the cache holds densekit heads' features: leave feature_cache out"
            )
        if feature_cache is not None and self.model.backbone is not None:
            self.model.feature_cache = FeatureCache(feature_cache, feature_cache_gb)
        self.loss_fn = self.configure_loss()
        stages = {s: self.configure_metric() for s in ("train", "val", "test")}
        grid = self.model.head_grid
        for k in range(len(grid.heads) if grid is not None else 0):
            stages[f"val_g{k}"] = copy.deepcopy(stages["val"])
        self.metrics = nn.ModuleDict({f"m_{s}": m for s, m in stages.items()})

    @property
    def hp(self) -> Any:
        """The hyper-parameters (an attribute dict of the ``__init__`` arguments)."""
        return self.hparams

    def metric(self, stage: str) -> Any:
        """The metric object of ``stage`` (``train``, ``val``, ``test`` or ``val_g<k>``)."""
        return self.metrics[f"m_{stage}"]

    # -- what each task defines --------------------------------------------------------------
    @abc.abstractmethod
    def output_spec(self) -> OutputSpec:
        """What the model outputs."""

    @abc.abstractmethod
    def configure_loss(self) -> nn.Module:
        """The loss of the model's outputs against the batch's target."""

    @abc.abstractmethod
    def configure_metric(self) -> nn.Module:
        """A fresh metric object (one per stage)."""

    def inputs(self, batch: dict[str, Any]) -> tuple[Tensor, ...]:
        """The images of a batch (``image``, or the two dates ``image1`` and ``image2``)."""
        if self.images == 1:
            return (batch["image"],)
        return tuple(batch[f"image{i + 1}"] for i in range(self.images))

    @abc.abstractmethod
    def target(self, batch: dict[str, Any]) -> Tensor:
        """The target of a batch, checked."""

    def metric_input(self, output: Tensor, target: Tensor) -> Tensor:
        """What the metrics compare with the target: labels, or the values."""
        if self.model.output.is_map_of_classes:
            return self.model.output.labels(output)
        return output

    def compute_metrics(self, stage: str) -> dict[str, float]:
        """The scores of ``stage``'s epoch; the metric starts again."""
        scores = self.metric(stage).scores()
        self.metric(stage).reset()
        return dict(scores)

    # -- the model ---------------------------------------------------------------------------
    def forward(self, *images: Tensor, keys: Any = None) -> Tensor:
        """Raw images ``(B, C, H, W)`` -> model outputs ``(B, K, H, W)`` (logits or values)."""
        return self.model(*images, keys=keys)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Lightning's loader, after checking that the checkpoint is one of this task."""
        task = read_task_name(checkpoint_path)
        if cls is not DenseTask and task != cls.__name__:
            raise DensekitError(
                f"{checkpoint_path}: the checkpoint is a {task}, not a {cls.__name__}"
            )
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
        datasets = getattr(dm, "datasets", None)
        grid = self.model.head_grid
        if stage == "fit" and grid is not None and datasets is not None and "val" not in datasets:
            raise DensekitError(
                "model.head_grid picks its best head on validation data: give val files or "
                "split fractions with a validation part"
            )

    def on_fit_start(self) -> None:
        if self.model.detail is not None:
            sizes = ", ".join(f"{k} {v:,}" for k, v in self.model.parameter_counts().items())
            rank_zero_info(f"trainable parameters: {sizes}")

    # -- steps -------------------------------------------------------------------------------
    def _shared_step(self, batch: dict[str, Any], stage: str) -> Tensor:
        """The loss of every head (one, or each of a grid outside testing); metrics updated with
        each grid head's output in validation, the selected head's otherwise."""
        target = self.target(batch)
        every_head = self.model.head_grid is not None and stage != "test"
        outputs = self.model.forward_all(
            *self.inputs(batch), keys=batch.get("cache_keys"), all_heads=every_head
        )
        losses = torch.stack([self.loss_fn(y, target) for y in outputs])
        if not torch.isfinite(losses).all():
            value = losses.item() if len(losses) == 1 else "not finite"
            raise DensekitError(f"{stage} loss is {value} on {batch.get('path')}")
        self.log(
            f"{stage}/loss",
            losses.mean(),
            on_step=stage == "train",
            on_epoch=True,
            batch_size=outputs[0].shape[0],
            sync_dist=stage != "train",
            prog_bar=stage == "train",
        )
        grid = self.model.head_grid
        if every_head and stage == "val":
            for k, y in enumerate(outputs):
                self.metric(f"val_g{k}").update(self.metric_input(y.detach(), target), target)
        else:
            y = outputs[int(grid.selected) if every_head and grid is not None else 0].detach()
            self.metric(stage).update(self.metric_input(y, target), target)
        return losses.sum()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Probabilities and labels (``probs``, ``pred``), or values (e.g. ``depth``)."""
        return self.model.output.prediction(self.model(*self.inputs(batch)))

    def _epoch_end(self, stage: str) -> dict[str, float]:
        scores = self.compute_metrics(stage)
        finite = {f"{stage}/{k}": v for k, v in scores.items() if math.isfinite(v)}
        self.log_dict(finite, sync_dist=False)
        return scores

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        grid = self.model.head_grid
        if grid is None:
            self._epoch_end("val")
            return
        scores = [self.compute_metrics(f"val_g{k}") for k in range(len(grid.heads))]
        best = scores[grid.select(scores)]  # the grid's best head becomes the selected one
        self.log_dict({f"val/{k}": v for k, v in best.items() if math.isfinite(v)})
        # every candidate's score on the grid's metric, e.g. val_grid/last_lr0.001/miou
        each = {f"val_grid/{name}/{grid.metric}": v for name, v in grid.scores.items()}
        self.log_dict({k: v for k, v in each.items() if math.isfinite(v)})

    def on_test_epoch_end(self) -> None:
        trivial = getattr(self.metric("test"), "trivial", None)
        floor = trivial() if callable(trivial) else None  # before the metric is reset
        scores = self._epoch_end("test")
        if self.trainer.is_global_zero:
            folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            folder.mkdir(parents=True, exist_ok=True)
            record = {
                "task": type(self).__name__,
                "metrics": scores,
                **provenance(self.model.backbone),
            }
            if floor is not None:  # one class everywhere, scored on the same test pixels
                record["trivial"] = floor
            if self.model.head_grid is not None:
                record["head_grid"] = self.model.head_grid.record()
            if isinstance(self.model.head, OfficialDecoderHead):
                record["official_head"] = self.model.head.record()
            (folder / "test_metrics.json").write_text(json.dumps(record, indent=2) + "\n")

    # -- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hp
        params = self.model.param_groups(hp.lr)  # a grid's heads at their own learning rates
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        steps = float(self.trainer.estimated_stepping_batches)
        factor = step_schedule(hp.schedule, hp.warmup_steps, steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # -- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        datamodule = getattr(self._trainer, "datamodule", None)
        rasters = datamodule.training_rasters() if isinstance(datamodule, DenseDataModule) else None
        self.model.into_task_checkpoint(checkpoint, type(self).__name__, rasters)
        checkpoint[RANDOM_STATE] = capture_random_state()
        if self.model.head_grid is not None:  # test_metrics.json of a later test lists them
            checkpoint["head_grid_scores"] = dict(self.model.head_grid.scores)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.model.from_task_checkpoint(checkpoint, type(self).__name__)
        if self.model.head_grid is not None:
            self.model.head_grid.scores.update(checkpoint.get("head_grid_scores") or {})
        trainer = self._trainer
        path = getattr(trainer, "ckpt_path", None) if trainer is not None else None
        where = f"checkpoint {path}" if path else "the checkpoint"
        check_tensor_names(checkpoint.get("state_dict") or {}, self.state_dict(), where)
        if RANDOM_STATE in checkpoint:  # before Lightning makes the resumed fit's 1st batch
            restore_random_state(checkpoint[RANDOM_STATE], where)


def check_tensor_names(stored: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """The checkpoint holds exactly the task's tensors (Lightning then loads them strictly);
    the error names the missing and unexpected ones on one line."""
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) {missing[:4]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s) {unexpected[:4]}")
        raise DensekitError(
            f"{where}: its tensors do not fit the model ({'; '.join(parts)}): a damaged "
            "checkpoint, or one of other model settings"
        )


def check_training_options(
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    dropout: float,
    head_grid: dict[str, Any] | None = None,
) -> None:
    """Refuse values that cannot train, before the model is built (``model.<name>`` keys)."""
    rates = [("lr", lr)]
    if head_grid is not None and head_grid.get("lr") is not None:
        grid = head_grid["lr"]
        rates += [("head_grid.lr", v) for v in (grid if isinstance(grid, list) else [grid])]
    for name, value in rates:
        if not _real(value) or not math.isfinite(value) or value <= 0:
            raise DensekitError(f"model.{name} {value!r}: give a finite learning rate > 0")
    if not _real(weight_decay) or not math.isfinite(weight_decay) or weight_decay < 0:
        raise DensekitError(f"model.weight_decay {weight_decay!r}: give a finite number >= 0")
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
        raise DensekitError(f"model.warmup_steps {warmup_steps!r}: give a whole number >= 0")
    if not _real(dropout) or not 0 <= dropout < 1:
        raise DensekitError(f"model.dropout {dropout!r}: give a number in [0, 1)")


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
