"""The scores a model must beat to mean something, measured on the same pixels as the model's:

* the trivial predictor: every pixel of the positive class. Its IoU is the positive class's
  share of the labelled pixels; a model below it has learnt nothing usable;
* a per-pixel baseline: logistic regression on the raw bands of each pixel (standardised with
  the training pixels' mean and std), fitted on the training pixels by full-batch L-BFGS. It
  sees no neighbourhood, so a model that does not beat it gains nothing from the backbone's
  features on that data.
"""

from __future__ import annotations

import numpy as np
import torch

from densekit.errors import DensekitError


def iou(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float:
    """IoU of the positive (True) pixels of ``pred`` and ``truth`` over the ``valid`` pixels
    (0 when neither has any)."""
    p, t = pred & valid, truth & valid
    union = int((p | t).sum())
    return float((p & t).sum() / union) if union else 0.0


def trivial_iou(truth: np.ndarray, valid: np.ndarray) -> float:
    """The IoU of predicting the positive class everywhere: its share of the valid pixels."""
    return iou(np.ones_like(truth, dtype=bool), truth, valid)


def pixel_logistic_regression(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    iterations: int = 100,
    seed: int = 0,
    max_pixels: int = 20000,
) -> np.ndarray:
    """Fit a binary logistic regression on pixels and predict others.

    Args:
        train_x: ``(N, C)`` band values of the labelled training pixels (finite).
        train_y: ``(N,)`` bool, the positive class.
        test_x: ``(M, C)`` band values to predict (non-finite values count as the mean).
        iterations: L-BFGS iterations (full batch).
        seed: the seed of the pixel sample and of the (zero-mean) initial weights.
        max_pixels: fit on at most this many training pixels, drawn at random (13 weights
            need no more; the fit then takes well under a second).

    Returns:
        ``(M,)`` bool: probability of the positive class above 0.5.
    """
    if len(train_x) == 0 or train_y.all() or not train_y.any():
        raise DensekitError(
            "the per-pixel baseline needs labelled training pixels of both classes; got "
            f"{len(train_x)} pixels, {int(train_y.sum())} positive"
        )
    if len(train_x) > max_pixels:
        keep = np.random.default_rng(seed).choice(len(train_x), max_pixels, replace=False)
        train_x, train_y = train_x[keep], train_y[keep]
    x = torch.from_numpy(np.asarray(train_x, dtype=np.float64))
    mean, std = x.mean(0), x.std(0).clamp_min(1e-9)
    x = (x - mean) / std
    y = torch.from_numpy(np.asarray(train_y, dtype=np.float64))
    generator = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(x.shape[1], generator=generator, dtype=torch.float64)).requires_grad_()
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=iterations, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y)
        value.backward()
        return value

    optimizer.step(loss)
    t = (torch.from_numpy(np.asarray(test_x, dtype=np.float64)) - mean) / std
    t = torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
    with torch.no_grad():
        return ((t @ w + b) > 0).numpy()
