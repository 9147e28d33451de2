"""Metric and loss formulas against hand computations; metrics synchronised across processes."""

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import free_port, rank_confusion_accuracy

from densekit.tasks.losses import (
    ChangeLossFn,
    DepthLossFn,
    SegmentationLoss,
    align_scale_shift,
    gradient_loss,
    sig_loss,
)
from densekit.tasks.metrics import ChangeMetrics, ConfusionMetrics, DepthMetrics


def test_confusion_scores_by_hand():
    m = ConfusionMetrics(3, ignore_index=255, class_names=["a", "b", "c"])
    target = torch.tensor([[0, 0, 1, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 2]])
    m.update(pred, target)
    s = m.scores()
    # a: tp1 fp0 fn1 -> 1/2; b: tp2 fp1 fn0 -> 2/3; c: absent from targets and (unignored) preds
    assert s["iou_a"] == pytest.approx(0.5) and s["iou_b"] == pytest.approx(2 / 3)
    assert np.isnan(s["iou_c"])
    assert s["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert s["acc_micro"] == pytest.approx(3 / 4)
    assert s["f1_macro"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    c = ChangeMetrics(3, ignore_index=255, class_names=["a", "b", "c"])
    c.update(pred, target)
    b = c.scores()  # change: b and c against a (tp 2, fp 1, fn 0)
    assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == pytest.approx(1.0)
    assert b["f1"] == pytest.approx(4 / 5) and b["iou"] == pytest.approx(2 / 3)
    assert b["miou"] == s["miou"]


def test_the_trivial_predictor_by_hand():
    """One class everywhere, the best class per metric, on the same (unignored) pixels."""
    m = ConfusionMetrics(3, ignore_index=255, class_names=["a", "b", "c"])
    target = torch.tensor([[0, 0, 0, 1, 255]])  # a: 3 of 4 pixels, b: 1, c: none
    m.update(torch.tensor([[1, 1, 2, 2, 0]]), target)  # the model's predictions do not matter
    t = m.trivial()
    assert t["iou_a"] == pytest.approx(3 / 4) and t["iou_b"] == pytest.approx(1 / 4)
    assert t["miou"] == pytest.approx(3 / 4 / 2)  # all a: a 3/4, b 0 (c absent)
    assert t["acc_micro"] == pytest.approx(3 / 4)
    c = ChangeMetrics(2, ignore_index=255, class_names=["same", "change"])
    c.update(torch.tensor([[0, 0, 0, 0, 0]]), torch.tensor([[0, 0, 0, 1, 255]]))
    assert c.trivial()["f1"] == pytest.approx(2 * 1 / (2 * 1 + 3))  # change everywhere


def test_depth_metrics_by_hand():
    m = DepthMetrics()
    gt = torch.tensor([[[[1.0, 2.0, float("nan"), 0.0]]]])
    pred = torch.tensor([[[[1.0, 3.0, 5.0, 5.0]]]])
    m.update(pred, gt)
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["rmse"] == pytest.approx(np.sqrt(0.5))
    assert out["mae"] == pytest.approx(0.5)
    assert out["absrel"] == pytest.approx(0.25)
    assert out["delta1"] == pytest.approx(0.5) and out["delta2"] == pytest.approx(1.0)


def test_sig_loss_formula_and_scale_shift_alignment():
    gt = torch.rand(1, 1, 8, 8) + 0.5
    valid = torch.ones_like(gt, dtype=torch.bool)
    pred = gt * 2.0  # a global scale: g is constant, var 0
    assert float(sig_loss(pred, gt, valid)) == pytest.approx(np.sqrt(0.15) * np.log(2), rel=1e-4)
    assert float(gradient_loss(pred, gt, valid)) == pytest.approx(0.0, abs=1e-6)
    aligned = align_scale_shift(3 * gt + 1, gt, valid)
    torch.testing.assert_close(aligned, gt, atol=1e-4, rtol=1e-4)
    ssi = DepthLossFn("l1", scale_shift_invariant=True)
    assert float(ssi(3 * gt + 1, gt)) == pytest.approx(0.0, abs=1e-4)


def test_losses_with_nothing_labelled_are_zero_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    ignored = torch.full((2, 4, 4), 255)
    for kind in ("ce", "dice", "focal", "lovasz", "ce+dice"):
        loss = SegmentationLoss(kind, 255)(logits, ignored)
        assert torch.isfinite(loss) and float(loss) == 0.0, kind
        loss.backward()
    change = ChangeLossFn("bce+dice", 255)(torch.randn(2, 1, 4, 4), ignored)
    assert float(change) == 0.0
    depth = DepthLossFn("silog+grad")(
        torch.rand(1, 1, 4, 4), torch.full((1, 1, 4, 4), float("nan"))
    )
    assert torch.isfinite(depth)


@pytest.mark.slow
def test_confusion_metrics_are_synchronised_across_processes():
    results = mp.Manager().dict()
    # the worker lives in helpers.py: spawned processes import it by that name
    mp.spawn(rank_confusion_accuracy, args=(free_port(), results), nprocs=2, join=True)
    assert results[0] == results[1] == pytest.approx(4 / 8)
