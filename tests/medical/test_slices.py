"""Slice inputs of 2D backbones on volumes: plane by patient direction, 2D and 2.5D stacks,
intensity to [0, 1]."""

import numpy as np
import pytest

from densekit.errors import DensekitError
from densekit.medical import Volume
from densekit.medical.slices import Intensity, plane_axis, slice_input, slice_target


def volume(affine_columns):
    affine = np.eye(4)
    affine[:3, :3] = np.array(affine_columns, dtype=float).T  # columns: slice, row, column steps
    return Volume(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6), affine)


def test_planes_follow_the_patient_axes_not_the_array_order():
    axial = volume([[0, 0, 2.5], [0, 0.8, 0], [0.8, 0, 0]])  # slices along S
    assert [plane_axis(axial, p) for p in ("axial", "coronal", "sagittal")] == [0, 1, 2]
    sagittal = volume([[1.0, 0, 0], [0, 0, -0.9], [0, 0.9, 0]])  # slices along L, rows along -S
    assert [plane_axis(sagittal, p) for p in ("axial", "coronal", "sagittal")] == [1, 2, 0]
    oblique = volume([[0.1, 0.2, 2.0], [0, 0.8, 0.1], [0.8, 0.05, 0]])
    assert plane_axis(oblique, "axial") == 0
    with pytest.raises(DensekitError, match="plane 'transverse' is not one of"):
        plane_axis(axial, "transverse")


def test_2d_repeats_the_slice_and_2_5d_stacks_clamped_neighbours():
    a = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    x = slice_input(a, 0, 2)
    assert x.shape == (3, 5, 6) and all((x[c] == a[2]).all() for c in range(3))
    x = slice_input(a, 0, 0, context=1)
    assert (x[0] == a[0]).all() and (x[1] == a[0]).all() and (x[2] == a[1]).all()
    x = slice_input(a, 2, 5, context=2)
    assert x.shape == (3, 4, 5) and (x[0] == a[:, :, 3]).all() and (x[2] == a[:, :, 5]).all()
    assert (slice_target(a, 1, 3) == a[:, 3]).all()
    with pytest.raises(DensekitError, match="slice 4 is outside the 4 slices"):
        slice_input(a, 0, 4)


def test_intensity_is_one_window_or_percentiles():
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])
    assert Intensity(ct_window="soft_tissue").apply(hu).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert Intensity(ct_window=(0, 100)).apply(np.array([50.0])).tolist() == [1.0]
    mr = np.concatenate([np.zeros(50), np.linspace(1, 100, 100)])
    scaled = Intensity(percentiles=(0, 100)).apply(mr)
    assert scaled.min() == 0 and scaled.max() == 1 and scaled.dtype == np.float32
    with pytest.raises(DensekitError, match="exactly one of ct_window"):
        Intensity()
    with pytest.raises(DensekitError, match="exactly one of ct_window"):
        Intensity(ct_window="lung", percentiles=(1, 99))
    with pytest.raises(DensekitError, match="percentiles \\[99, 1\\]"):
        Intensity(percentiles=(99, 1))
    with pytest.raises(DensekitError, match="lungs"):
        Intensity(ct_window="lungs")
