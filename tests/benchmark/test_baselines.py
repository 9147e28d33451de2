"""The trivial predictor and the per-pixel logistic regression the quickstart scores."""

from __future__ import annotations

import numpy as np
import pytest

from densekit.benchmark.baselines import iou, pixel_logistic_regression, trivial_iou
from densekit.errors import DensekitError


def test_trivial_iou_is_the_positive_share_of_the_valid_pixels():
    truth = np.array([[1, 0, 0, 1], [0, 0, 1, 1]], bool)
    valid = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
    assert trivial_iou(truth, valid) == pytest.approx(2 / 6)
    assert iou(truth, truth, valid) == 1.0


def test_logistic_regression_separates_what_a_band_separates_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3))
    y = x[:, 1] > 0.3  # band 2 decides
    pred = pixel_logistic_regression(x[:2000], y[:2000], x[2000:])
    assert iou(pred, y[2000:], np.ones(2000, bool)) > 0.95
    noise = rng.random(4000) < 0.5  # labels unrelated to the bands: no better than chance
    pred = pixel_logistic_regression(x[:2000], noise[:2000], x[2000:])
    assert (pred == noise[2000:]).mean() < 0.6


def test_one_class_only_is_an_error():
    with pytest.raises(DensekitError, match=r"both classes; got 10 pixels, 0 positive"):
        pixel_logistic_regression(np.zeros((10, 2)), np.zeros(10, bool), np.zeros((1, 2)))
