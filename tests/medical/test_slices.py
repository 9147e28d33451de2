"""Slice inputs of 2D backbones on volumes: plane by patient direction, 2D and 2.5D stacks,
intensity to [0, 1]."""

import numpy as np
import pytest

from densekit.errors import DensekitError
from densekit.medical import Volume, read_volume, write_nifti
from densekit.medical.slices import (
    Intensity,
    display_order,
    plane_axis,
    slice_input,
    slice_target,
)


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


# ------------------------------------------------------------------- display orientation
def stored_as(vol: Volume, order, flips) -> Volume:
    """The same voxels at the same patient positions, stored in another axis order: the array
    transposed by ``order`` and reversed along ``flips``, the affine to match."""
    array = np.transpose(vol.array, order)[tuple(slice(None, None, -1 if f else 1) for f in flips)]
    affine = np.eye(4)
    affine[:3, 3] = vol.affine[:3, 3]
    for new, (old, flip) in enumerate(zip(order, flips, strict=True)):
        affine[:3, new] = -vol.affine[:3, old] if flip else vol.affine[:3, old]
        if flip:
            affine[:3, 3] += (array.shape[new] - 1) * vol.affine[:3, old]
    return Volume(np.ascontiguousarray(array), affine)


def patient_coordinates() -> Volume:
    """An axial DICOM-like volume (slices +z, rows +y, columns +x, LPS) whose value in each
    voxel encodes its patient position, so any reordering shows in the values."""
    affine = np.eye(4)
    affine[:3, :3] = np.array([[0, 0, 0.6], [0, 0.8, 0], [2.5, 0, 0]])  # columns: s, r, c steps
    affine[:3, 3] = (-10.0, 20.0, 30.0)
    s, r, c = np.meshgrid(np.arange(4), np.arange(5), np.arange(6), indexing="ij")
    return Volume((100 * s + 10 * r + c).astype(np.float32), affine)


def displayed(vol: Volume, plane: str) -> np.ndarray:
    return np.ascontiguousarray(display_order(vol, plane).apply(vol.array))


def test_one_display_orientation_whatever_the_storage_order(tmp_path):
    import nibabel as nib

    dicom = patient_coordinates()
    write_nifti(dicom, tmp_path / "v.nii.gz")
    nib.save(nib.as_closest_canonical(nib.load(tmp_path / "v.nii.gz")), tmp_path / "ras.nii.gz")
    canonical = read_volume(tmp_path / "ras.nii.gz")
    assert np.array_equal(canonical.array, dicom.array[:, ::-1, ::-1])  # RAS: -x, -y stored
    others = [
        canonical,
        stored_as(dicom, (1, 0, 2), (False, True, False)),  # coronal: slices +y, rows -z
        stored_as(dicom, (2, 0, 1), (True, True, False)),  # sagittal, slices -x: rows -z
        stored_as(dicom, (0, 2, 1), (True, False, True)),  # axial, transposed and flipped
    ]
    for plane in ("axial", "coronal", "sagittal"):
        want = displayed(dicom, plane)
        for other in others:
            np.testing.assert_array_equal(displayed(other, plane), want)
            axis = 0  # the display's axis 0 is the plane normal
            assert want.shape[axis] == other.shape[plane_axis(other, plane)]
            for context in (0, 1):
                np.testing.assert_array_equal(
                    slice_input(displayed(other, plane), axis, 1, context),
                    slice_input(want, axis, 1, context),
                )
        display = display_order(others[2], plane)
        np.testing.assert_array_equal(display.undo(display.apply(others[2].array)), others[2].array)


def test_display_rows_and_columns_point_the_radiological_way():
    # value = 100 * z-step + 10 * y-step + x-step of the axial DICOM-like volume
    z, y, x = 100, 10, 1
    steps = {  # plane: (normal, rows, columns) as changes of the value per index
        "axial": (z, y, x),  # rows to posterior (+y), columns to patient left (+x)
        "coronal": (y, -z, x),  # superior at the top, columns to patient left
        "sagittal": (x, -z, y),  # superior at the top, columns to posterior
    }
    vol = patient_coordinates()
    for stored in (vol, stored_as(vol, (2, 0, 1), (True, True, False))):
        for plane, (normal, rows, columns) in steps.items():
            a = displayed(stored, plane)
            assert a[1, 0, 0] - a[0, 0, 0] == normal, plane
            assert a[0, 1, 0] - a[0, 0, 0] == rows, plane
            assert a[0, 0, 1] - a[0, 0, 0] == columns, plane
