"""CT windows and percentile normalisation: exact values on small arrays, numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densekit.errors import DensekitError, UnknownNameError
from densekit.medical import CT_WINDOWS, ct_window, percentile_normalize, window_bounds


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("soft_tissue", -160, 240), ("lung", -1350, 150), ("bone", -500, 1300), ("brain", 0, 80)],
)
def test_presets_map_their_bounds_to_0_and_1(name, low, high):
    assert window_bounds(name) == (low, high)
    hu = np.array([low - 500, low, (low + high) / 2, high, high + 500])
    np.testing.assert_allclose(ct_window(hu, name), [0, 0, 0.5, 1, 1])


def test_custom_window_and_torch_input():
    assert window_bounds((300, 1500)) == (-450, 1050)
    hu = torch.tensor([[-1000, 40, 1000]], dtype=torch.int16)
    out = ct_window(hu, (40, 400))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.5, 1.0]]))
    assert ct_window(np.array([40]), "soft_tissue").dtype == np.float32


def test_bad_windows_name_the_valid_ones():
    with pytest.raises(UnknownNameError, match="unknown CT window 'liver'; presets: soft_tissue"):
        ct_window(np.zeros(3), "liver")
    assert set(CT_WINDOWS) == {"soft_tissue", "lung", "bone", "brain"}
    with pytest.raises(DensekitError, match=r"width 0\.0 HU: must be positive"):
        ct_window(np.zeros(3), (40, 0))


def test_percentiles_over_the_nonzero_foreground():
    values = np.concatenate([np.zeros(1000), np.arange(1, 102)])  # background 0, tissue 1..101
    out = percentile_normalize(values, 1, 99)
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1
    np.testing.assert_allclose(out[1000 + 50], 0.5)  # the median of 1..101 -> 0.5
    everything = percentile_normalize(values, 1, 99, foreground="all")
    assert everything[1000] > 0  # the background sets the 1st percentile: tissue lifted
    mask = values > 50
    np.testing.assert_allclose(percentile_normalize(values, 0, 100, foreground=mask)[-1], 1.0)


def test_percentiles_on_tensors_and_bad_input():
    t = torch.arange(1.0, 102.0)
    out = percentile_normalize(t, 0, 100)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, (t - 1) / 100)
    with pytest.raises(DensekitError, match=r"percentiles \(99, 1\)"):
        percentile_normalize(t, 99, 1)
    with pytest.raises(DensekitError, match="empty foreground"):
        percentile_normalize(np.zeros(5))
    with pytest.raises(DensekitError, match=r"both 3\.0: nothing to scale"):
        percentile_normalize(np.full(5, 3.0))
    with pytest.raises(DensekitError, match=r"mask of shape \(2,\), values \(5,\)"):
        percentile_normalize(np.ones(5), foreground=np.ones(2, bool))
