"""NIfTI / NRRD <-> Volume: round trips on synthetic oblique volumes, NRRD spaces, the
TotalSegmentator and pyradiomics files in ../shared/data, and the errors on bad files."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from helpers import needs_shared_data

from densekit.data.dicom_series import read_series
from densekit.data.nifti import read_nifti, read_nrrd, read_volume, reorient_like, write_nifti
from densekit.data.volume import LPS_TO_RAS, Volume
from densekit.errors import DensekitError


def oblique_volume(dtype=np.float32, shape=(4, 5, 6)) -> Volume:
    """A volume whose axes are rotated about two patient axes, anisotropic, off the origin."""
    a, b = np.radians(25), np.radians(-40)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rot = rot @ np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.5, 0.7, 0.9])
    affine[:3, 3] = (-31.5, 12.25, 104.0)
    array = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    return Volume(array=array, affine=affine)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_oblique(tmp_path, suffix):
    volume = oblique_volume()
    path = write_nifti(volume, tmp_path / f"v{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"v{suffix}"]  # no temporary left
    back = read_nifti(path)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-4)
    assert back.same_grid(volume) and back.array.dtype == np.float32
    header = nib.load(path).header
    assert int(header["sform_code"]) == int(header["qform_code"]) == 1
    # the NIfTI's (i, j, k) is (column, row, slice) and its affine is RAS
    image = nib.load(path)
    assert image.shape == (6, 5, 4)
    ras = LPS_TO_RAS @ volume.affine @ np.array([3, 2, 1, 1.0])  # slice 3, row 2, column 1
    np.testing.assert_allclose(image.affine @ [1, 2, 3, 1], ras, atol=1e-4)
    assert np.asarray(image.dataobj)[1, 2, 3] == volume.array[3, 2, 1]


@pytest.mark.parametrize(
    ("values", "stored"),
    [([0, 1, 7], np.uint8), ([-1024, 3000], np.int16), ([0, 70000], np.int32), ([0.5], np.float32)],
)
def test_nifti_stores_labels_as_small_integers(tmp_path, values, stored):
    array = np.zeros((2, 3, 4), dtype=np.int64 if isinstance(values[0], int) else np.float64)
    array.flat[: len(values)] = values
    volume = dataclasses.replace(oblique_volume(), array=array)
    path = write_nifti(volume, tmp_path / "labels.nii.gz")
    assert nib.load(path).get_data_dtype() == stored
    np.testing.assert_array_equal(read_nifti(path).array, array)


def test_nifti_keeps_a_shear_in_the_sform(tmp_path):
    volume = oblique_volume()
    affine = volume.affine.copy()
    affine[:3, 0] += 0.4 * affine[:3, 1]  # gantry tilt: slice step not normal to the plane
    sheared = dataclasses.replace(volume, affine=affine)
    back = read_nifti(write_nifti(sheared, tmp_path / "tilt.nii.gz"))
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    assert back.extra["nifti_affine_from"] == "sform"


def test_write_nifti_bad_names(tmp_path):
    with pytest.raises(DensekitError, match=r"out\.nrrd: a NIfTI file name ends in .*'\.nrrd'"):
        write_nifti(oblique_volume(), tmp_path / "out.nrrd")
    with pytest.raises(DensekitError, match=r"folder .*nope does not exist"):
        write_nifti(oblique_volume(), tmp_path / "nope" / "out.nii")


def test_write_nifti_failure_leaves_nothing(tmp_path, monkeypatch):
    def fail(image, name):
        Path(name).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(oblique_volume(), tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_write_nifti_honours_the_umask_not_mkstemp(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = write_nifti(oblique_volume(), tmp_path / "out.nii.gz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open() creates files


def write_nrrd(path, volume: Volume, space: str) -> None:
    """``volume`` as NRRD in ``space`` (file axes (i, j, k) = (column, row, slice))."""
    sign = {"left-posterior-superior": [1, 1, 1], "right-anterior-superior": [-1, -1, 1]}[space]
    ijk = volume.affine[:3][:, [2, 1, 0, 3]] * np.array(sign)[:, None]
    header = {"space": space, "space directions": ijk[:, :3].T, "space origin": ijk[:, 3]}
    nrrd.write(str(path), np.transpose(volume.array, (2, 1, 0)), header)


@pytest.mark.parametrize("space", ["left-posterior-superior", "right-anterior-superior"])
def test_nrrd_spaces_give_the_same_volume(tmp_path, space):
    volume = oblique_volume(np.int16)
    write_nrrd(tmp_path / "v.nrrd", volume, space)
    back = read_nrrd(tmp_path / "v.nrrd")
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-9)
    assert back.array.dtype == np.int16 and back.extra["nrrd_space"] == space
    assert read_volume(tmp_path / "v.nrrd").same_grid(volume)


def test_nrrd_unsupported_space_and_axes(tmp_path):
    data = np.zeros((3, 4, 5), dtype=np.uint8)
    header = {"space": "scanner-xyz", "space directions": np.eye(3), "space origin": np.zeros(3)}
    nrrd.write(str(tmp_path / "scanner.nrrd"), data, header)
    with pytest.raises(
        DensekitError, match=r"scanner\.nrrd: NRRD space 'scanner-xyz' is not supported"
    ):
        read_nrrd(tmp_path / "scanner.nrrd")
    nrrd.write(str(tmp_path / "nospace.nrrd"), data)
    with pytest.raises(DensekitError, match=r"nospace\.nrrd: NRRD space None"):
        read_nrrd(tmp_path / "nospace.nrrd")
    directions = np.vstack([np.full(3, np.nan), np.eye(3)])  # a vector axis of 2 components
    header = {"space": "RAS", "space directions": directions, "kinds": ["vector", *["domain"] * 3]}
    nrrd.write(str(tmp_path / "vector.nrrd"), np.zeros((2, 3, 4, 5)), header)
    with pytest.raises(DensekitError, match=r"vector\.nrrd: NRRD of sizes \[2, 3, 4, 5\]"):
        read_nrrd(tmp_path / "vector.nrrd")


def test_bad_files_named(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DensekitError, match=r"broken\.nii\.gz is not a readable NIfTI file"):
        read_nifti(tmp_path / "broken.nii.gz")
    with pytest.raises(DensekitError, match=r"no such NIfTI file: .*absent\.nii"):
        read_nifti(tmp_path / "absent.nii")
    (tmp_path / "broken.nrrd").write_text("NRRD0004\ntype: what\n\n")
    with pytest.raises(DensekitError, match=r"broken\.nrrd is not a readable NRRD file"):
        read_nrrd(tmp_path / "broken.nrrd")
    (tmp_path / "v.mha").write_bytes(b"")
    with pytest.raises(DensekitError, match=r"v\.mha: unknown volume format '\.mha'; use \.nii"):
        read_volume(tmp_path / "v.mha")
    write_nifti(oblique_volume(), tmp_path / "v.nii")
    with pytest.raises(DensekitError, match=r"v\.nii: series_uid='1\.2' applies to DICOM only"):
        read_volume(tmp_path / "v.nii", series_uid="1.2")
    image = nib.Nifti1Image(np.zeros((2, 3, 4, 2), dtype=np.float32), np.eye(4))
    nib.save(image, tmp_path / "time.nii")
    with pytest.raises(DensekitError, match=r"time\.nii holds an array of shape \(2, 3, 4, 2\)"):
        read_nifti(tmp_path / "time.nii")


def test_reorient_like_permutes_and_flips_exactly():
    volume = oblique_volume(np.int16)
    array = np.flip(np.transpose(volume.array, (2, 0, 1)), 1)  # stored as (column, slice, row)
    affine = volume.affine[:, [2, 0, 1, 3]].copy()
    affine[:3, 3] += (volume.shape[0] - 1) * affine[:3, 1]
    affine[:3, 1] *= -1
    stored = Volume(array=np.ascontiguousarray(array), affine=affine, source="labels.nii")
    assert not stored.same_grid(volume)
    back = reorient_like(stored, volume)
    assert back.same_grid(volume)
    np.testing.assert_array_equal(back.array, volume.array)
    shifted = dataclasses.replace(stored, affine=stored.affine + np.diag([0, 0, 0, 0]) + 0.3)
    with pytest.raises(
        DensekitError, match=r"labels\.nii \(\(6, 4, 5\) voxels.*is not on the grid of"
    ):
        reorient_like(shifted, volume)


# ------------------------------------------------------------------------------ shared data


def test_totalsegmentator_nifti_images_and_label_maps():
    root = needs_shared_data("ct-mr-organ-seg-totalsegmentator")
    for image, labels in [
        ("ct_nifti/example_ct_sm.nii.gz", "ct_nifti/example_seg.nii.gz"),
        ("mr_nifti/example_mr_sm.nii.gz", "mr_nifti/example_seg_mr.nii.gz"),
    ]:
        volume, seg = read_volume(root / image), read_volume(root / labels)
        assert volume.same_grid(seg) and seg.array.dtype == np.uint8
        assert volume.array.dtype == np.int16 and volume.modality == ""
        k, j, i = volume.shape
        assert nib.load(root / image).shape == (i, j, k)
    ct = read_nifti(root / "ct_nifti/example_ct_sm.nii.gz")
    np.testing.assert_allclose(ct.spacing, (3, 3, 3), atol=1e-5)
    # RAS (-177.956, 11.319, 94.302) at voxel 0 is LPS (177.956, -11.319, 94.302)
    np.testing.assert_allclose(ct.affine[:3, 3], (177.956, -11.319, 94.302), atol=1e-3)


def test_totalsegmentator_dicom_labels_stored_with_rows_flipped():
    root = needs_shared_data("ct-mr-organ-seg-totalsegmentator", "ct_dicom_series")
    image = read_volume(root / "example_ct_dicom")  # a DICOM folder -> read_series
    labels = read_nifti(root / "example_seg_dicom.nii.gz")
    assert image.shape == labels.shape and not labels.same_grid(image)
    aligned = reorient_like(labels, image)
    assert aligned.same_grid(image)
    inside = aligned.array > 0
    assert (image.array[inside] > -500).mean() > 0.95  # organs are in the body, not in the air
    assert (image.array[labels.array > 0] > -500).mean() < 0.8  # unflipped: visibly wrong


def test_pyradiomics_nrrd_pairs_on_one_grid():
    root = needs_shared_data("nrrd-mri-ct-masks-pyradiomics")
    for case in ("brain1", "brain2", "breast1"):
        image, label = (
            read_nrrd(root / f"{case}_image.nrrd"),
            read_nrrd(root / f"{case}_label.nrrd"),
        )
        assert image.same_grid(label) and set(np.unique(label.array)) == {0, 1}
    phantom = read_nrrd(root / "prostate_phantom_subvolume.nrrd")
    assert phantom.shape == (13, 67, 82) and phantom.array.dtype == np.uint16
    np.testing.assert_allclose(phantom.spacing, (3.0, 0.5, 0.5))
    np.testing.assert_allclose(phantom.affine[:3, 2], (-0.5, 0, 0))  # columns run to patient right


def test_read_volume_dicom_file_matches_the_folder():
    root = needs_shared_data("dicom-seg-ct-dcmqi", "ct-3slice")
    one = read_volume(root / "01.dcm")
    assert one.shape == (1, 512, 512) and one.modality == "CT"
    assert read_series(root).same_grid(read_volume(root))
