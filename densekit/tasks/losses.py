"""Losses: segmentation (cross-entropy, and segmentation-models-pytorch's Dice, Focal, Lovasz),
depth (SigLoss, gradient matching, L1, optionally scale-and-shift invariant) and change.

Depth losses use only valid pixels: finite targets > 0 (NaN marks invalid ones).

* SigLoss (Eigen et al. 2014, as in DINOv2's depth heads): with ``g = log(pred) - log(gt)`` over
  the valid pixels of the batch, ``sqrt(var(g) + 0.15 * mean(g)^2)``.
* Gradient loss (MiDaS multi-scale gradient matching): at scales 1, 2, 4, 8 (subsampling), the
  mean of ``|dx g| + |dy g|`` over neighbouring valid pixels, on ``g = log pred - log gt``.
* Scale-and-shift invariant mode: each prediction is first aligned to its target by least
  squares (``s * pred + t``) over the valid pixels; metrics use the same alignment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

SegLoss = Literal["ce", "dice", "focal", "lovasz", "ce+dice"]
DepthLoss = Literal["silog", "silog+grad", "l1", "l1+grad"]
ChangeLoss = Literal["bce", "dice", "bce+dice"]


class SegmentationLoss(nn.Module):
    """``(B, K, H, W)`` logits, ``(B, H, W)`` labels -> scalar."""

    def __init__(
        self,
        kind: SegLoss,
        ignore_index: int | None,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.ignore_index = ignore_index
        self.parts = nn.ModuleList()
        names = kind.split("+")
        for name in names:
            if name == "ce":
                self.parts.append(
                    nn.CrossEntropyLoss(
                        weight=weight, ignore_index=-100 if ignore_index is None else ignore_index
                    )
                )
            elif name == "dice":
                self.parts.append(smp.losses.DiceLoss("multiclass", ignore_index=ignore_index))
            elif name == "focal":
                self.parts.append(smp.losses.FocalLoss("multiclass", ignore_index=ignore_index))
            elif name == "lovasz":
                self.parts.append(smp.losses.LovaszLoss("multiclass", ignore_index=ignore_index))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.ignore_index is not None and bool((target == self.ignore_index).all()):
            return logits.sum() * 0  # nothing labelled in this batch (e.g. all nodata)
        return sum((part(logits, target) for part in self.parts), logits.new_zeros(()))


class ChangeLossFn(nn.Module):
    """Binary change: ``(B, 1, H, W)`` logits, ``(B, H, W)`` labels in {0, 1, ignore}."""

    def __init__(self, kind: ChangeLoss, ignore_index: int | None) -> None:
        super().__init__()
        self.kind = kind
        self.ignore_index = ignore_index
        self.dice = smp.losses.DiceLoss("binary", ignore_index=ignore_index)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        loss = logits.sum() * 0
        if self.ignore_index is not None and bool((target == self.ignore_index).all()):
            return loss  # nothing labelled in this batch
        if "bce" in self.kind:
            valid = target != self.ignore_index if self.ignore_index is not None else None
            t = target.float()
            bce = F.binary_cross_entropy_with_logits(logits[:, 0], t.clamp(0, 1), reduction="none")
            loss = loss + (bce[valid].mean() if valid is not None else bce.mean())
        if "dice" in self.kind:
            loss = loss + self.dice(logits, target.unsqueeze(1))
        return loss


def valid_depth(target: Tensor, positive: bool = True) -> Tensor:
    """Valid targets: finite, and > 0 for depths (heights may be 0 or below)."""
    valid = torch.isfinite(target)
    return valid & (target > 0) if positive else valid


def align_scale_shift(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Per image, the least-squares ``s * pred + t`` fit to ``target`` on valid pixels."""
    out = pred.clone()
    for i in range(pred.shape[0]):
        m = valid[i]
        if m.sum() < 2:
            continue
        p, g = pred[i][m], target[i][m]
        a = torch.stack([p, torch.ones_like(p)], dim=1)
        sol = torch.linalg.lstsq(a, g.unsqueeze(1)).solution
        out[i] = pred[i] * sol[0, 0] + sol[1, 0]
    return out


def sig_loss(pred: Tensor, target: Tensor, valid: Tensor, lam: float = 0.85) -> Tensor:
    g = torch.log(pred.clamp_min(1e-6)[valid]) - torch.log(target[valid])
    if g.numel() < 2:
        return pred.sum() * 0
    return torch.sqrt((g.var(unbiased=False) + (1 - lam) * g.mean() ** 2).clamp_min(1e-12))


def gradient_loss(
    pred: Tensor, target: Tensor, valid: Tensor, scales: int = 4, log: bool = True
) -> Tensor:
    if log:
        g = torch.where(valid, torch.log(pred.clamp_min(1e-6)) - torch.log(target.nan_to_num(1)), 0)
    else:  # heights: gradients of the plain residual
        g = torch.where(valid, pred - target.nan_to_num(0), 0)
    total = pred.new_zeros(())
    for k in range(scales):
        step = 2**k
        gk, vk = g[..., ::step, ::step], valid[..., ::step, ::step]
        vx = vk[..., :, 1:] & vk[..., :, :-1]
        vy = vk[..., 1:, :] & vk[..., :-1, :]
        dx = (gk[..., :, 1:] - gk[..., :, :-1]).abs()[vx]
        dy = (gk[..., 1:, :] - gk[..., :-1, :]).abs()[vy]
        n = dx.numel() + dy.numel()
        if n:
            total = total + (dx.sum() + dy.sum()) / n
    return total


class DepthLossFn(nn.Module):
    """``(B, 1, H, W)`` predicted depth and target (NaN = invalid) -> scalar."""

    def __init__(
        self,
        kind: DepthLoss,
        grad_weight: float = 0.5,
        scale_shift_invariant: bool = False,
        height: bool = False,
    ):
        super().__init__()
        self.kind = kind
        self.grad_weight = grad_weight
        self.ssi = scale_shift_invariant
        self.height = height

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        valid = valid_depth(target, positive=not self.height)
        if self.ssi:
            pred = align_scale_shift(pred, target, valid)
            if not self.height:
                pred = pred.clamp_min(1e-6)
        if self.kind.startswith("silog"):
            loss = sig_loss(pred, target, valid)
        else:
            diff = (pred - target.nan_to_num(0)).abs()[valid]
            loss = diff.mean() if diff.numel() else pred.sum() * 0
        if self.kind.endswith("+grad"):
            loss = loss + self.grad_weight * gradient_loss(pred, target, valid, log=not self.height)
        return loss
