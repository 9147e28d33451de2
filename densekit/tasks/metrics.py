"""Metrics on torchmetrics: accumulated over an epoch, synchronised across processes.

Segmentation and change metrics come from one confusion matrix (``MulticlassConfusionMatrix``,
ignored pixels left out). Per class ``c``: ``IoU_c = TP / (TP + FP + FN)``, ``F1_c = 2 TP /
(2 TP + FP + FN)``. Macro values average the classes that occur in the targets or the predictions
(classes absent from both are left out, as mmsegmentation does); ``acc_micro`` is the fraction
of correct pixels (named micro: it is dominated by large classes).

Depth metrics are computed per image on its valid pixels and averaged over images (the NYU /
KITTI convention): RMSE, MAE, AbsRel = mean(|p - g| / g), and delta_k = fraction of pixels with
max(p / g, g / p) < 1.25^k. For heights (0 = ground), AbsRel and delta_k use the pixels above 0
and are averaged over the images that have such pixels (NaN when none has).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix


class ConfusionMetrics(MulticlassConfusionMatrix):
    """Confusion matrix that reports mIoU, per-class IoU, F1 and accuracy."""

    def __init__(self, num_classes: int, ignore_index: int | None, class_names: Sequence[str]):
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, validate_args=False)
        self.class_names = list(class_names)

    def scores(self) -> dict[str, float]:
        # synced across processes; rows: target, cols: prediction
        return self.scores_of(self.compute().double())

    def trivial(self) -> dict[str, float]:
        """What predicting one class everywhere would score on the same pixels, for each
        metric the best over the classes (the floor a model must clear)."""
        cm = self.compute().double()
        truth = cm.sum(1)
        best: dict[str, float] = {}
        for c in range(len(truth)):
            constant = torch.zeros_like(cm)
            constant[:, c] = truth
            for key, value in self.scores_of(constant).items():
                if value == value and value > best.get(key, -1.0):  # NaN: class absent
                    best[key] = value
        return best

    def scores_of(self, cm: Tensor) -> dict[str, float]:
        """The scores of confusion matrix ``cm`` (rows: target, columns: prediction)."""
        tp = cm.diag()
        fp = cm.sum(0) - tp
        fn = cm.sum(1) - tp
        present = (tp + fp + fn) > 0
        iou = tp / (tp + fp + fn).clamp_min(1)
        f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
        out = {
            "miou": float(iou[present].mean()) if present.any() else 0.0,
            "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
            "acc_micro": float(tp.sum() / cm.sum().clamp_min(1)),
        }
        for name, value, p in zip(self.class_names, iou.tolist(), present.tolist(), strict=True):
            out[f"iou_{name}"] = value if p else float("nan")
        return out


class ChangeMetrics(ConfusionMetrics):
    """:class:`ConfusionMetrics` plus ``f1``, ``iou``, ``precision`` and ``recall`` of change:
    class 0 is no change, any other class (binary change: class 1; semantic change: every
    from-to transition) is a change."""

    def scores_of(self, cm: Tensor) -> dict[str, float]:
        out = super().scores_of(cm)
        tp = cm[1:, 1:].sum()
        fp = cm[0, 1:].sum()
        fn = cm[1:, 0].sum()
        out.update(
            f1=float(2 * tp / (2 * tp + fp + fn).clamp_min(1)),
            iou=float(tp / (tp + fp + fn).clamp_min(1)),
            precision=float(tp / (tp + fp).clamp_min(1)),
            recall=float(tp / (tp + fn).clamp_min(1)),
        )
        return out


class DepthMetrics(Metric):
    """RMSE, MAE, AbsRel and delta < 1.25^k, per image then averaged."""

    full_state_update = False
    rmse: Tensor
    mae: Tensor
    absrel: Tensor
    delta1: Tensor
    delta2: Tensor
    delta3: Tensor
    images: Tensor
    ratio_images: Tensor  # images with pixels > 0, over which AbsRel and delta are averaged

    def __init__(self, height: bool = False) -> None:
        super().__init__()
        self.height = height  # heights: RMSE/MAE on all finite pixels, ratios on those > 0
        for name in (
            "rmse",
            "mae",
            "absrel",
            "delta1",
            "delta2",
            "delta3",
            "images",
            "ratio_images",
        ):
            self.add_state(
                name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
            )

    def update(self, pred: Tensor, target: Tensor) -> None:
        valid = torch.isfinite(target) & (target > 0 if not self.height else True)
        for p, g, m in zip(pred, target, valid, strict=True):
            if not m.any():
                continue
            p, g = p[m].double(), g[m].double()
            err = p - g
            self.rmse += err.square().mean().sqrt()
            self.mae += err.abs().mean()
            pos = g > 0
            if pos.any():
                pp, gp = p[pos].clamp_min(1e-6), g[pos]
                ratio = torch.maximum(pp / gp, gp / pp)
                self.absrel += ((pp - gp).abs() / gp).mean()
                self.delta1 += (ratio < 1.25).double().mean()
                self.delta2 += (ratio < 1.25**2).double().mean()
                self.delta3 += (ratio < 1.25**3).double().mean()
                self.ratio_images += 1
            self.images += 1

    def scores(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.compute().items()}

    def compute(self) -> dict[str, Tensor]:
        n = self.images.clamp_min(1)
        out = {k: getattr(self, k) / n for k in ("rmse", "mae")}
        m = self.ratio_images
        for k in ("absrel", "delta1", "delta2", "delta3"):
            out[k] = getattr(self, k) / m if m > 0 else torch.full_like(m, float("nan"))
        return out
