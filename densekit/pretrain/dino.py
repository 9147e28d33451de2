"""DINO self-distillation (with DINOv2's iBOT and KoLeo terms) as a Lightning module.

The recipe follows the DINO and DINOv2 papers:

* a student ViT and a teacher that is the student's exponential moving average (momentum rising
  from ``momentum`` to 1 on a cosine); each has a DINO head (3-layer MLP, bottleneck, l2
  normalisation, weight-normalised prototypes with the norm fixed to 1);
* the teacher sees the global crops, the student all crops; the loss is the cross-entropy between
  the teacher's centred, sharpened distribution (temperature warmed up from
  ``warmup_teacher_temp`` to ``teacher_temp``) and the student's (``student_temp``) over every
  pair of different views; the centre is an EMA of the teacher's outputs (``center_momentum``);
* iBOT (``ibot_weight`` > 0): in ``int(B * mask_probability)`` of the ``B`` global crops of a
  batch (at least one) a random fraction in ``mask_ratio`` of the patches (at least one) is
  replaced by a learnt mask token in the student, as DINOv2 (a fixed count, so every DDP rank
  runs the same collectives); a separate patch head is distilled from the teacher's unmasked
  patch tokens on those positions (its own centre), each image's patches weighted by 1 / its
  masked count and the result averaged over the masked images. With ``ibot_weight`` 0 the patch
  heads are not built and the mask token stays frozen (every trainable parameter gets a
  gradient, as DDP needs);
* KoLeo (``koleo_weight`` > 0): ``-mean(log(nearest-neighbour distance))`` of the student's
  l2-normalised class tokens within each global crop set, spreading features (0 for a per-rank
  batch of one);
* AdamW with linear warm-up then cosine decay of the learning rate and a cosine weight-decay
  schedule; the prototypes are frozen for ``freeze_last_layer_steps`` steps; the teacher's EMA
  follows each optimizer step (not each micro-batch under ``accumulate_grad_batches``).

Continued pretraining starts the backbone from any registry entry's weights with fresh heads;
the backbone's learning rate is held at 0 for ``backbone_warmup_steps`` steps while the heads
learn, then scaled by ``backbone_lr_scale``, so the random heads cannot wreck the pretrained
features.

Monitoring (logged every step): the losses, the teacher's per-sample entropy and the entropy of
its batch-mean distribution (both divided by log K), and ``feature_std``, the per-dimension
standard deviation of the teacher's normalised class tokens times sqrt(C) (about 1 when spread,
0 when collapsed). A warning is raised at the end of an epoch when the batch entropy or the
feature std falls below ``collapse_threshold``: the features have collapsed to a point.
Optionally a k-NN check of the teacher's patch features on a small labelled raster (``probe_*``;
:mod:`densekit.pretrain.probe`), run on rank 0 and logged as ``probe_miou``.

At the end of training rank 0 writes the teacher backbone (DINO evaluates the teacher) in its
family's official layout to ``export_path`` (default ``<run folder>/export/<backbone>.pth``),
with ``card.json`` beside it, and every rank waits for it; ``load_backbone(<backbone>,
weights=<that file>)`` reads it. The global and local crop sizes must be multiples of the patch.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from densekit.backbones import load_backbone
from densekit.backbones.checkpoint import sha256_file
from densekit.backbones.export import official_state_dict
from densekit.backbones.vit import DinoViT
from densekit.errors import DensekitError
from densekit.io import atomic_outputs, temporary_path
from densekit.pretrain.objective import DINOHead, dino_loss, ibot_loss, koleo_loss
from densekit.pretrain.probe import Probe
from densekit.schedules import cosine


class DinoPretrainTask(L.LightningModule):
    """Self-supervised DINO pretraining of a registry ViT (see the module docstring).

    Args:
        backbone: registry name of the ViT (``densekit backbones`` lists them).
        weights: ``"random"`` to train from scratch, or weights to continue from (a file, a
            Hugging Face folder, ``"official"``, ``"bundled"``).
        arch: architecture overrides of the registry entry (``embed_dim``, ``depth``,
            ``num_heads``, ...; see ``load_backbone``); the exported file then needs the same
            overrides when loaded.
        out_dim: number of prototypes of the DINO (and iBOT) head.
        hidden_dim, bottleneck_dim: widths of the heads' MLP.
        student_temp, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_steps: softmax
            temperatures and the teacher's linear warm-up.
        center_momentum: EMA factor of the centres.
        momentum: the teacher's EMA factor at step 0 (cosine to 1 at the last step).
        ibot_weight: weight of the iBOT masked-patch loss (0 disables it and its heads).
        mask_ratio: range of the fraction of patches masked in a masked crop.
        mask_probability: fraction of global crops that are masked (at least one per batch).
        koleo_weight: weight of the KoLeo regulariser (0 disables it).
        lr: peak learning rate (for a batch of 256; scaled linearly by the batch size, as DINO).
        min_lr: final learning rate.
        warmup_steps: linear learning-rate warm-up.
        weight_decay, weight_decay_end: cosine weight-decay schedule (not on biases and norms).
        freeze_last_layer_steps: steps the prototypes stay fixed.
        backbone_warmup_steps: steps the backbone's learning rate is 0 (continued pretraining).
        backbone_lr_scale: the backbone's learning rate relative to the heads'.
        collapse_threshold: warn when batch entropy or feature std falls below it.
        probe_image, probe_label: a small labelled raster pair for the k-NN check (None: off;
            read and checked here).
        probe_label_map: raw label value -> class for the probe (values not in it are ignored).
        probe_num_classes: classes of the probe.
        probe_window: side of the probe windows (a multiple of the patch).
        probe_k: neighbours in the vote.
        probe_every_n_epochs: how often to run the check.
        export_path: where the teacher backbone is written at the end (None: run folder).
    """

    def __init__(
        self,
        backbone: str = "densekit_vitt16",
        weights: str = "random",
        arch: dict[str, Any] | None = None,
        out_dim: int = 4096,
        hidden_dim: int = 1024,
        bottleneck_dim: int = 256,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_steps: int = 500,
        center_momentum: float = 0.9,
        momentum: float = 0.992,
        ibot_weight: float = 1.0,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        koleo_weight: float = 0.1,
        lr: float = 5e-4,
        min_lr: float = 1e-6,
        warmup_steps: int = 200,
        weight_decay: float = 0.04,
        weight_decay_end: float = 0.4,
        freeze_last_layer_steps: int = 100,
        backbone_warmup_steps: int = 0,
        backbone_lr_scale: float = 1.0,
        collapse_threshold: float = 0.05,
        probe_image: str | None = None,
        probe_label: str | None = None,
        probe_label_map: dict[int, int] | None = None,
        probe_num_classes: int = 2,
        probe_window: int = 128,
        probe_k: int = 20,
        probe_every_n_epochs: int = 1,
        export_path: str | None = None,
    ) -> None:
        for name, value, least in (
            ("lr", lr, None),
            ("min_lr", min_lr, 0.0),
            ("weight_decay", weight_decay, 0.0),
            ("weight_decay_end", weight_decay_end, 0.0),
        ):
            ok = isinstance(value, (int, float)) and math.isfinite(value)
            if not ok or (value < least if least is not None else value <= 0):
                valid = "> 0" if least is None else f">= {least:g}"
                raise DensekitError(f"model.{name} {value!r}: give a finite number {valid}")
        super().__init__()
        self.save_hyperparameters()
        student = load_backbone(backbone, weights, layers="last", **(arch or {}))
        if not isinstance(student, DinoViT):
            raise DensekitError(
                f"model.init_args.backbone: {backbone} is not a ViT; DINO pretraining (with iBOT "
                "masking) needs one of the dinov2_*/dinov3_vit*/densekit_* entries"
            )
        student.model.requires_grad_(True)
        self.student = student
        self.teacher = copy.deepcopy(student).requires_grad_(False)
        dim = student.arch.embed_dim
        ibot = ibot_weight > 0
        lo, hi = mask_ratio
        if ibot and not (0 < mask_probability <= 1 and 0 <= lo <= hi <= 1):
            raise DensekitError(
                f"model.init_args.mask_probability {mask_probability} / mask_ratio {mask_ratio}: "
                "need 0 < mask_probability <= 1 and 0 <= low <= high <= 1"
            )
        # Exported with the backbone (the official layout has it); trained only with iBOT.
        self.mask_token = nn.Parameter(torch.zeros(1, dim), requires_grad=ibot)
        self.student_head = DINOHead(dim, out_dim, hidden_dim, bottleneck_dim)
        self.teacher_head = copy.deepcopy(self.student_head).requires_grad_(False)
        self.student_patch_head: DINOHead | None = None
        self.teacher_patch_head: DINOHead | None = None
        if ibot:
            self.student_patch_head = DINOHead(dim, out_dim, hidden_dim, bottleneck_dim)
            self.teacher_patch_head = copy.deepcopy(self.student_patch_head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("patch_center", torch.zeros(1, out_dim))
        self.weights_sha256 = student.weights.sha256 if weights != "random" else None
        self._monitor: dict[str, list[float]] = {"batch_entropy": [], "feature_std": []}
        self.collapsed = False
        self.history: list[dict[str, float]] = []
        self._started = time.time()
        self.probe: Probe | None = None
        if probe_image is not None or probe_label is not None:
            missing = "probe_label" if probe_image is not None else "probe_image"
            if probe_image is None or probe_label is None:
                raise DensekitError(
                    f"model.init_args.{missing} is missing; the k-NN check needs both"
                )
            self.probe = Probe(
                probe_image,
                probe_label,
                probe_label_map,
                probe_num_classes,
                student.in_chans,
                student.patch_size,
                probe_window,
            )

    def setup(self, stage: str) -> None:
        """Check the data module's crop sizes against the backbone's patch."""
        dm = getattr(self.trainer, "datamodule", None)
        p = self.student.patch_size
        sizes = {k: getattr(dm, k, None) for k in ("global_size", "local_size")}
        bad = {k: v for k, v in sizes.items() if isinstance(v, int) and v % p}
        if bad:
            near = [sorted({max(v // p, 1) * p, (v // p + 1) * p}) for v in bad.values()]
            raise DensekitError(
                ", ".join(f"data.{k} {v}" for k, v in bad.items())
                + f": not a multiple of the patch {p} of {self.hp.backbone} (e.g. "
                + ", ".join(" or ".join(map(str, n)) for n in near)
                + ")"
            )

    @property
    def hp(self) -> Any:
        """The hyper-parameters (an attribute dict of the ``__init__`` arguments)."""
        return self.hparams

    # -- schedules ---------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return max(int(self.trainer.estimated_stepping_batches), 1)

    def teacher_temperature(self, step: int) -> float:
        hp = self.hp
        if step >= hp.warmup_teacher_temp_steps:
            return hp.teacher_temp
        frac = step / max(hp.warmup_teacher_temp_steps, 1)
        return hp.warmup_teacher_temp + frac * (hp.teacher_temp - hp.warmup_teacher_temp)

    def teacher_momentum(self, step: int) -> float:
        return cosine(step, self.total_steps, self.hp.momentum, 1.0)

    def _lr_factor(self, step: int, delay: int) -> float:
        hp = self.hp
        step -= delay
        if step < 0:
            return 0.0
        if step < hp.warmup_steps:
            return (step + 1) / hp.warmup_steps
        span = max(self.total_steps - delay - hp.warmup_steps, 1)
        return cosine(step - hp.warmup_steps, span, 1.0, hp.min_lr / hp.lr)

    def configure_optimizers(self) -> Any:
        hp = self.hp
        dm = getattr(self.trainer, "datamodule", None)
        batch = dm.batch_size if dm is not None else 256
        world = max(self.trainer.world_size, 1)
        peak = hp.lr * batch * world / 256
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad or name.startswith(("teacher", "teacher_")):
                continue
            in_backbone = name.startswith("student.") or name == "mask_token"
            no_decay = p.ndim <= 1 or name.endswith(("token", "pos_embed", ".bias"))
            groups.setdefault((in_backbone, no_decay), []).append(p)
        param_groups = [
            {
                "params": params,
                "lr": peak * (hp.backbone_lr_scale if bb else 1.0),
                "weight_decay": 0.0 if nd else hp.weight_decay,
                "apply_wd": not nd,
                "backbone": bb,
            }
            for (bb, nd), params in groups.items()
        ]
        optimizer = torch.optim.AdamW(param_groups, betas=(0.9, 0.999))
        delays = [hp.backbone_warmup_steps if g["backbone"] else 0 for g in param_groups]
        lambdas: list[Callable[[int], float]] = [
            functools.partial(self._lr_factor, delay=d) for d in delays
        ]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    # -- training ----------------------------------------------------------------------------
    def _masks(self, b: int, n: int, device: torch.device) -> Tensor:
        """``(b, n)`` iBOT masks: ``int(b * mask_probability)`` random images (at least one),
        each with a random fraction in ``mask_ratio`` of its patches masked (at least one)."""
        lo, hi = self.hp.mask_ratio
        count = (n * (lo + (hi - lo) * torch.rand(b, device=device))).long().clamp(1, n)
        count[torch.randperm(b, device=device)[max(int(b * self.hp.mask_probability), 1) :]] = 0
        rank = torch.rand(b, n, device=device).argsort(1).argsort(1)  # a random order per image
        return rank < count[:, None]

    def _reduce_mean(self, x: Tensor) -> Tensor:
        if dist.is_available() and dist.is_initialized():
            x = x.clone()
            dist.all_reduce(x)
            x /= dist.get_world_size()
        return x

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        hp = self.hp
        step = self.global_step
        n_global = 2
        globals_ = torch.cat(batch[:n_global])
        b = batch[0].shape[0]
        temp = self.teacher_temperature(step)
        with torch.no_grad():
            t_cls, t_patch = self.teacher.encode(globals_)
            t_out = self.teacher_head(t_cls)
            t_probs = F.softmax((t_out - self.center) / temp, dim=-1)
        p = self.student.patch_size
        n_patches = (globals_.shape[-2] // p) * (globals_.shape[-1] // p)
        s_patch_head, t_patch_head = self.student_patch_head, self.teacher_patch_head
        masks = None
        if s_patch_head is not None:
            masks = self._masks(globals_.shape[0], n_patches, globals_.device)
        s_cls, s_patch = self.student.encode(globals_, masks, self.mask_token)
        s_out = [self.student_head(s_cls)]
        for local in batch[n_global:]:
            cls, _ = self.student.encode(local)
            s_out.append(self.student_head(cls))
        s_logp = [F.log_softmax(o / hp.student_temp, dim=-1) for o in s_out]
        s_views = list(s_logp[0].chunk(n_global)) + s_logp[1:]
        dino = dino_loss(list(t_probs.chunk(n_global)), s_views)
        loss = dino
        logs = {"dino_loss": dino.detach()}
        if masks is not None and s_patch_head is not None and t_patch_head is not None:
            # every batch has masked patches: all ranks run the same collectives below
            with torch.no_grad():
                t_pout = t_patch_head(t_patch[masks])
                t_pprobs = F.softmax((t_pout - self.patch_center) / temp, dim=-1)
            s_plogp = F.log_softmax(s_patch_head(s_patch[masks]) / hp.student_temp, dim=-1)
            ibot = ibot_loss(t_pprobs, s_plogp, masks)
            loss = loss + hp.ibot_weight * ibot
            logs["ibot_loss"] = ibot.detach()
            self._update_center("patch_center", t_pout)
        if hp.koleo_weight > 0:
            koleo = torch.stack([koleo_loss(c) for c in s_cls.chunk(n_global)]).mean()
            loss = loss + hp.koleo_weight * koleo
            logs["koleo_loss"] = koleo.detach()
        self._update_center("center", t_out)
        with torch.no_grad():
            k = math.log(t_probs.shape[-1])
            entropy = -(t_probs * torch.log(t_probs + 1e-12)).sum(-1).mean() / k
            mean_p = self._reduce_mean(t_probs.mean(0))
            batch_entropy = -(mean_p * torch.log(mean_p + 1e-12)).sum() / k
            feats = F.normalize(t_cls.float(), dim=-1)
            spread = feats.std(0).mean() if b > 1 else feats.new_zeros(())
            feature_std = spread * math.sqrt(feats.shape[-1])
        self._monitor["batch_entropy"].append(float(batch_entropy))
        self._monitor["feature_std"].append(float(feature_std))
        logs.update(
            teacher_entropy=entropy,
            batch_entropy=batch_entropy,
            feature_std=feature_std,
            teacher_temp=torch.tensor(temp),
            momentum=torch.tensor(self.teacher_momentum(step)),
        )
        self.log("loss", loss.detach(), prog_bar=True, sync_dist=True)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, sync_dist=True)
        return loss

    @torch.no_grad()
    def _update_center(self, name: str, teacher_out: Tensor) -> None:
        mean = self._reduce_mean(teacher_out.float().mean(0, keepdim=True))
        center = getattr(self, name)
        m = self.hp.center_momentum
        center.mul_(m).add_(mean, alpha=1 - m)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        step = self.global_step
        hp = self.hp
        wd = cosine(step, self.total_steps, hp.weight_decay, hp.weight_decay_end)
        for g in optimizer.param_groups:
            if g.get("apply_wd"):
                g["weight_decay"] = wd
        if step < hp.freeze_last_layer_steps:
            for head in (self.student_head, self.student_patch_head):
                for p in head.last_layer.parameters() if head is not None else []:
                    p.grad = None

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer's step, then the teacher's EMA (once per step, not per micro-batch)."""
        super().optimizer_step(*args, **kwargs)
        self.update_teacher()

    @torch.no_grad()
    def update_teacher(self) -> None:
        """EMA of the student into the teacher (backbone and heads)."""
        m = self.teacher_momentum(self.global_step)
        pairs: list[tuple[nn.Module, nn.Module]] = [
            (self.student.model, self.teacher.model),
            (self.student_head, self.teacher_head),
        ]
        if self.student_patch_head is not None and self.teacher_patch_head is not None:
            pairs.append((self.student_patch_head, self.teacher_patch_head))
        for student, teacher in pairs:
            t_params: list[Tensor] = list(teacher.parameters())
            torch._foreach_mul_(t_params, m)
            torch._foreach_add_(t_params, [p.detach() for p in student.parameters()], alpha=1 - m)

    def on_train_epoch_end(self) -> None:
        summary = {"epoch": float(self.current_epoch), "step": float(self.global_step)}
        for key, values in self._monitor.items():
            if values:
                summary[key] = float(np.mean(values[-max(len(values) // 4, 1) :]))
            values.clear()
        threshold = self.hp.collapse_threshold
        low = {k: v for k, v in summary.items() if k in self._monitor and v < threshold}
        # At initialisation (LayerScale 1e-5) every image has the same class token: judge
        # collapse only once the learning-rate and temperature warm-ups are over.
        warm = max(self.hp.warmup_steps, self.hp.warmup_teacher_temp_steps)
        if low and self.global_step >= warm:
            self.collapsed = True
            rank_zero_warn(
                f"DINO collapse at epoch {self.current_epoch}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in low.items())
                + f" (below {threshold}); the teacher outputs one point. Lower the teacher "
                "temperature, raise center_momentum's effect (smaller value) or the learning rate "
                "warm-up"
            )
        due = (self.current_epoch + 1) % self.hp.probe_every_n_epochs == 0
        if self.probe is not None and due and self.trainer.is_global_zero:
            summary["probe_miou"] = self.knn_probe()
            self.log("probe_miou", summary["probe_miou"], prog_bar=True, rank_zero_only=True)
        self.history.append(summary)

    # -- k-NN check --------------------------------------------------------------------------
    def knn_probe(self) -> float:
        """Macro IoU of k-NN patch labels, right half of the probe raster from the left half."""
        if self.probe is None:
            raise DensekitError("model.init_args.probe_image/probe_label: no probe raster given")
        return self.probe.miou(lambda t: self.teacher.encode(t.to(self.device))[1], self.hp.probe_k)

    # -- export and resume -------------------------------------------------------------------
    def export_file(self) -> Path:
        if self.hp.export_path:
            return Path(self.hp.export_path)
        root = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        return root / "export" / f"{self.student.spec.name}.pth"

    def export(self, path: str | Path | None = None) -> Path:
        """Write the teacher backbone (official layout) and ``card.json`` beside it."""
        path = Path(path) if path is not None else self.export_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        teacher = self.teacher
        sd = official_state_dict(
            teacher.arch,
            teacher.model,
            mask_token=self.mask_token,
            rope_periods=getattr(teacher, "_rope_periods", None),
        )
        card = {
            "backbone": teacher.spec.name,
            "weights": str(path),
            "sha256": "",  # of the weights file, once written
            "started_from": self.hp.weights,
            "started_from_sha256": self.weights_sha256,
            "steps": int(self.global_step),
            "epochs_completed": int(self.current_epoch),
            "hours": round((time.time() - self._started) / 3600, 3),
            "recipe": {k: v for k, v in self.hp.items() if not k.startswith(("probe_", "_"))},
            "history": self.history,
            "collapsed": self.collapsed,
        }
        dm = getattr(self._trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "sources"):
            from densekit.pretrain.data import describe_sources

            card["data"] = describe_sources(dm.sources)
        weights_tmp = temporary_path(path)

        def write_card(tmp: Path) -> None:
            card["sha256"] = sha256_file(weights_tmp)
            tmp.write_text(json.dumps(card, indent=1, default=str))

        # the weights and their card all or nothing (a full disk leaves the previous pair)
        atomic_outputs(
            {path: lambda tmp: torch.save(sd, tmp), path.with_name("card.json"): write_card}
        )
        return path

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            print(f"exported the teacher backbone to {self.export()}")
        self.trainer.strategy.barrier("densekit_export")  # no rank ends before the file exists

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hp = checkpoint.get("hyper_parameters", {})
        theirs = hp.get("backbone")
        if theirs is not None and theirs != self.hp.backbone:
            raise DensekitError(
                f"ckpt_path: the checkpoint pretrains {theirs}, this run's "
                f"model.init_args.backbone is {self.hp.backbone}; resume with the same "
                "backbone (or start a new run from exported weights with weights: <file>)"
            )
        mine = self.state_dict()
        wrong = [
            k
            for k, v in checkpoint.get("state_dict", {}).items()
            if k in mine and tuple(v.shape) != tuple(mine[k].shape)
        ]
        if wrong:
            raise DensekitError(
                f"ckpt_path: {len(wrong)} tensors differ in shape from this run's model (e.g. "
                f"{wrong[0]}); the checkpoint is of another architecture or head size"
            )
