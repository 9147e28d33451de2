"""DICOM series -> Volume: geometry on tiny synthetic series written here, values and codecs on
the real files in ../shared/data."""

from __future__ import annotations

import hashlib
import random
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import needs_shared_data
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from densekit.data.dicom_series import read_series, scan_series
from densekit.data.volume import Volume, pseudonym
from densekit.errors import DensekitError

PATIENT_NAME, PATIENT_ID = "Doe^Janet", "PID-9731"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def write_slice(
    path: Path,
    pixels: np.ndarray,
    position: tuple[float, float, float],
    series_uid: str,
    *,
    orientation: tuple[float, ...] = AXIAL,
    spacing: tuple[float, float] = (0.5, 0.75),
    modality: str = "MR",
    instance: int = 1,
    description: str = "t1",
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    bits: int = 16,
) -> str:
    """A single-frame image with real geometry tags; returns its SOPInstanceUID."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = (
        CT_IMAGE if modality == "CT" else MR_IMAGE
    )
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", series_uid
    ds.FrameOfReferenceUID = "1.2.3.5"
    ds.Modality, ds.SeriesDescription, ds.InstanceNumber = modality, description, instance
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 1.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = int(pixels.dtype == np.int16)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def write_series(
    folder: Path, positions: list[tuple[float, float, float]], **kwargs
) -> tuple[str, list[str]]:
    """Slices at ``positions`` (slice k filled with 100 * k + a column ramp) under shuffled
    file names and InstanceNumbers; returns the series UID and the SOPInstanceUIDs in order."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = kwargs.pop("series_uid", None) or generate_uid()
    numbers = list(range(1, len(positions) + 1))
    random.Random(len(positions)).shuffle(numbers)
    sops = []
    for k, position in enumerate(positions):
        pixels = (100 * k + np.tile(np.arange(6), (4, 1))).astype(np.uint16)
        name = hashlib.md5(f"{uid}{k}".encode()).hexdigest()[:8] + ".dcm"
        sops.append(
            write_slice(folder / name, pixels, position, uid, instance=numbers[k], **kwargs)
        )
    return uid, sops


def axial(n: int, step: float = 2.5, z0: float = -10.0) -> list[tuple[float, float, float]]:
    return [(-20.0, 30.0, z0 + k * step) for k in range(n)]


# ---------------------------------------------------------------- synthetic geometry


def test_order_by_position_not_file_name_or_instance_number(tmp_path):
    positions = axial(5)
    uid, sops = write_series(tmp_path, positions[::-1])  # slice 0 of the files is the top one
    volume = read_series(tmp_path)
    assert volume.shape == (5, 4, 6)
    assert list(volume.array[:, 0, 0]) == [400, 300, 200, 100, 0]  # sorted by z, increasing
    assert volume.sop_instance_uids == tuple(sops[::-1])
    assert volume.series_uid == uid and volume.modality == "MR"
    np.testing.assert_allclose(volume.spacing, (2.5, 0.5, 0.75))
    np.testing.assert_allclose(volume.affine[:3, 3], positions[0])
    assert volume.array.dtype == np.float32


def test_oblique_affine_maps_voxels_to_their_positions(tmp_path):
    a = np.radians(30)
    row_cos, col_cos = (np.cos(a), np.sin(a), 0.0), (0.0, np.cos(a / 2), -np.sin(a / 2))
    normal = np.cross(row_cos, col_cos)
    origin = np.array([5.0, -7.0, 11.0])
    positions = [tuple(origin + k * 3.0 * normal) for k in range(3)]
    write_series(tmp_path, positions, orientation=(*row_cos, *col_cos), spacing=(0.5, 0.75))
    volume = read_series(tmp_path)
    for s, r, c in [(0, 0, 0), (2, 3, 5), (1, 2, 0)]:
        expected = origin + s * 3.0 * normal + r * 0.5 * np.array(col_cos)
        expected = expected + c * 0.75 * np.array(row_cos)
        np.testing.assert_allclose(volume.affine @ [s, r, c, 1], [*expected, 1], atol=1e-3)
    assert "sheared_affine" not in volume.extra


def test_two_series_listed_then_selected(tmp_path):
    uid_a, _ = write_series(tmp_path / "a", axial(3), description="t1 axial")
    uid_b, _ = write_series(tmp_path / "b", axial(4), modality="CT", description="ct body")
    infos = scan_series(tmp_path)
    assert sorted((i.uid, i.n_instances, i.modality) for i in infos) == sorted(
        [(uid_a, 3, "MR"), (uid_b, 4, "CT")]
    )
    with pytest.raises(DensekitError, match="holds 2 image series") as err:
        read_series(tmp_path)
    for text in (uid_a, uid_b, "3 instances", "4 instances", "CT"):
        assert text in str(err.value)
    for text in ("t1 axial", "ct body"):  # free text, which may name a patient: never printed
        assert text not in str(err.value)
    assert read_series(tmp_path, series_uid=uid_b).shape == (4, 4, 6)
    with pytest.raises(DensekitError, match=r"series 9\.9\.9 is not in"):
        read_series(tmp_path, series_uid="9.9.9")


def test_one_series_in_two_orientations_is_split(tmp_path):
    uid, _ = write_series(tmp_path, axial(2))
    sagittal = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    write_slice(
        tmp_path / "sag.dcm", np.zeros((4, 6), np.uint16), (0, 0, 0), uid, orientation=sagittal
    )
    infos = scan_series(tmp_path)
    assert sorted(i.n_instances for i in infos) == [1, 2] and {i.uid for i in infos} == {uid}
    with pytest.raises(DensekitError, match="2 orientations"):
        read_series(tmp_path, series_uid=uid)
    with pytest.raises(DensekitError, match="2 orientations"):  # not a "choice" of one UID
        read_series(tmp_path)
    two = next(i for i in infos if i.n_instances == 2)
    assert read_series(two.files).shape == (2, 4, 6)


def test_missing_slice_error_names_position(tmp_path):
    positions = axial(6)
    write_series(tmp_path, positions[:2] + positions[3:])  # z = -5.0 missing
    with pytest.raises(DensekitError, match=r"1 slice\(s\) missing at -5\.00 mm") as err:
        read_series(tmp_path)
    assert "on_missing='resample'" in str(err.value)


def test_missing_slice_resampled_with_a_warning(tmp_path):
    positions = axial(6)
    _, sops = write_series(tmp_path, positions[:2] + positions[3:])
    with pytest.warns(UserWarning, match="linearly interpolated"):
        volume = read_series(tmp_path, on_missing="resample")
    assert volume.shape == (6, 4, 6) and volume.extra["interpolated_slices"] == [2]
    np.testing.assert_allclose(volume.array[:, 0, 0], [0, 100, 150, 200, 300, 400])
    assert volume.sop_instance_uids == (sops[0], sops[1], "", *sops[2:])
    np.testing.assert_allclose(volume.spacing[0], 2.5)


def test_duplicate_slices_error_names_both_files(tmp_path):
    positions = axial(3)
    write_series(tmp_path, [*positions, positions[1]])
    with pytest.raises(DensekitError, match="duplicate") as err:
        read_series(tmp_path)
    assert str(err.value).count(str(tmp_path)) == 2 and "-7.500 mm" in str(err.value)


def test_uneven_spacing_error_names_gaps_and_file(tmp_path):
    write_series(tmp_path, [(0, 0, z) for z in (0.0, 2.0, 4.0, 7.0, 9.0)])
    with pytest.raises(DensekitError, match=r"uneven slice spacing: gaps .* 2, 2, 3, 2 mm") as err:
        read_series(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_inconsistent_pixel_spacing_names_file_and_values(tmp_path):
    uid, _ = write_series(tmp_path, axial(2))
    write_slice(
        tmp_path / "odd.dcm", np.zeros((4, 6), np.uint16), axial(3)[2], uid, spacing=(0.6, 0.75)
    )
    with pytest.raises(DensekitError, match=r"odd\.dcm.* has PixelSpacing \(0\.6, 0\.75\)"):
        read_series(tmp_path)


def test_gantry_tilt_gives_an_exact_sheared_affine(tmp_path):
    tilt = np.radians(15)
    positions = [(0.0, k * 2.0 * np.tan(tilt), k * 2.0) for k in range(4)]  # shifted along y
    write_series(tmp_path, positions)
    volume = read_series(tmp_path)
    assert volume.extra["sheared_affine"] is True
    assert volume.extra["gantry_tilt_deg"] == pytest.approx(15, abs=0.01)
    for k, position in enumerate(positions):
        np.testing.assert_allclose(volume.affine @ [k, 0, 0, 1], [*position, 1], atol=1e-3)
    np.testing.assert_allclose(volume.affine[:3, 0] @ [0, 0, 1], 2.0)  # 2 mm along the normal


def test_rescale_is_applied_per_slice(tmp_path):
    uid = generate_uid()
    raw = np.arange(24, dtype=np.int16).reshape(4, 6)
    for k, (slope, intercept) in enumerate([(1, -1024), (2, -1000), (0.5, 7)]):
        write_slice(
            tmp_path / f"{k}.dcm",
            raw,
            (0, 0, 3.0 * k),
            uid,
            modality="CT",
            rescale=(slope, intercept),
        )
    volume = read_series(tmp_path)
    np.testing.assert_allclose(volume.array[0], raw - 1024)
    np.testing.assert_allclose(volume.array[1], raw * 2 - 1000)
    np.testing.assert_allclose(volume.array[2], raw * 0.5 + 7)


def test_monochrome1_reflected_within_the_stored_range(tmp_path):
    write_series(tmp_path / "mr", axial(2), photometric="MONOCHROME1", bits=12)
    volume = read_series(tmp_path / "mr")
    np.testing.assert_allclose(volume.array[1, 0, :3], [4095 - 100, 4095 - 101, 4095 - 102])
    assert volume.extra["monochrome1_reflected_about"] == 4095
    write_series(
        tmp_path / "ct", axial(2), photometric="MONOCHROME1", modality="CT", rescale=(1, -1024)
    )
    ct = read_series(tmp_path / "ct")  # HU are physical: kept
    np.testing.assert_allclose(ct.array[1, 0, :3], [100 - 1024, 101 - 1024, 102 - 1024])
    assert "kept" in ct.extra["monochrome1"]


def test_no_patient_tags_in_the_volume(tmp_path):
    write_series(tmp_path, axial(3))
    volume = read_series(tmp_path)
    text = repr(volume) + str(vars(volume)) + volume.describe()
    assert PATIENT_ID not in text and "Janet" not in text and "Doe" not in text
    assert volume.patient_key == pseudonym(PATIENT_ID)


def test_folder_without_dicom_says_what_it_found(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    with pytest.raises(
        DensekitError, match=r"holds no DICOM image series \(found: non-DICOM file x2\)"
    ):
        read_series(tmp_path)
    with pytest.raises(DensekitError, match="on_missing='skip'"):
        read_series(tmp_path, on_missing="skip")  # type: ignore[arg-type]
    with pytest.raises(DensekitError, match="neither a folder nor a file"):
        read_series(tmp_path / "absent")


# ---------------------------------------------------------------- real data


def test_dcmqi_ct_three_slices_match_pydicom():
    folder = needs_shared_data("dicom-seg-ct-dcmqi", "ct-3slice")
    volume = read_series(folder)
    assert volume.shape == (3, 512, 512) and volume.modality == "CT"
    np.testing.assert_allclose(volume.spacing, (1.0, 0.810547, 0.810547), rtol=1e-5)
    first = pydicom.dcmread(folder / "03.dcm")  # lowest z
    assert volume.sop_instance_uids[0] == first.SOPInstanceUID
    hu = first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept)
    np.testing.assert_array_equal(volume.array[0], hu)
    np.testing.assert_allclose(volume.affine[:3, 3], [float(v) for v in first.ImagePositionPatient])


def test_jpeg2000_series_lines_up_with_its_nifti_labels():
    import nibabel as nib

    base = needs_shared_data("ct-mr-organ-seg-totalsegmentator", "ct_dicom_series")
    volume = read_series(base / "example_ct_dicom")
    assert volume.shape == (20, 512, 512)
    labels = nib.load(base / "example_seg_dicom.nii.gz")
    # the NIfTI stores rows bottom-up: reorient it to our axes, then the affines agree exactly
    ours = nib.orientations.io_orientation(volume.nifti_affine())
    flip = nib.orientations.ornt_transform(nib.orientations.io_orientation(labels.affine), ours)
    labels = labels.as_reoriented(flip)
    np.testing.assert_allclose(labels.affine, volume.nifti_affine(), atol=1e-4)
    seg = np.asarray(labels.dataobj).transpose(2, 1, 0)  # (i, j, k) -> (slice, row, column)
    assert seg.shape == volume.shape
    hu = volume.array
    assert 40 < hu[seg == 5].mean() < 150  # liver
    assert (hu[seg > 0] < -500).mean() < 0.05  # organs are not air...
    assert (hu[seg[:, ::-1] > 0] < -500).mean() > 0.2  # ...unless the rows are misaligned


def test_rtstruct_beside_the_ct_is_not_an_image():
    folder = needs_shared_data("dicom-rtstruct-ct-rtutils")
    infos = [i for i in scan_series(folder) if i.files[0].parent == folder]
    assert len(infos) == 1 and infos[0].n_instances == 2 and infos[0].modality == "CT"
    volume = read_series([folder / "ct_1.dcm", folder / "ct_2.dcm", folder / "rt.dcm"])
    assert volume.shape == (2, 512, 512) and volume.spacing[0] == pytest.approx(5.0)
    with pytest.raises(DensekitError, match=r"no DICOM image series \(found: RTSTRUCT x1\)"):
        read_series(folder / "rt.dcm")


def test_seg_sr_and_rwv_are_named_when_no_image():
    folder = needs_shared_data("dicom-seg-ct-dcmqi", "qin_headneck_sr_example")
    with pytest.raises(DensekitError, match=r"found: RWV x1, SEG x1, SR x1"):
        read_series(folder)


def test_pydicom_codecs_and_byte_orders_give_the_same_pixels():
    files = needs_shared_data("pydicom-testfiles", "pydicom_test_files")
    reference = read_series(files / "MR_small.dcm")
    for name in (
        "MR_small_RLE",
        "MR_small_jp2klossless",
        "MR_small_bigendian",
        "MR_small_implicit",
    ):
        volume = read_series(files / f"{name}.dcm")
        np.testing.assert_array_equal(volume.array, reference.array, err_msg=name)
        assert volume.same_grid(reference)


def test_enhanced_ct_frames_become_slices():
    path = needs_shared_data("pydicom-testfiles", "pydicom_data_store", "eCT_Supplemental.dcm")
    volume = read_series(path)
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
    assert volume.shape == (2, 512, 512) and volume.spacing[0] == pytest.approx(10.0)
    # the normal is -z (row cosine -x): z = -149 (frame 2) comes first; shared rescale -1024
    np.testing.assert_array_equal(volume.array, raw[::-1] - 1024)
    np.testing.assert_allclose(volume.affine[:3, 3], [99.5, -301.5, -149.0])
    assert isinstance(volume, Volume) and volume.sop_instance_uids[0] == volume.sop_instance_uids[1]


def test_monochrome1_radiograph_is_reflected():
    path = needs_shared_data("pydicom-testfiles", "pydicom_data_store", "RG3_UNCR.dcm")
    volume = read_series(path)
    raw = pydicom.dcmread(path).pixel_array
    assert volume.extra["monochrome1_reflected_about"] == 1023  # 10 bits stored
    np.testing.assert_array_equal(volume.array[0], 1023 - raw.astype(np.float32))
    assert "geometry" in volume.extra  # a radiograph has no patient position


def test_bad_real_objects_are_refused_with_their_reason():
    store = needs_shared_data("pydicom-testfiles", "pydicom_data_store")
    files = needs_shared_data("pydicom-testfiles", "pydicom_test_files")
    with pytest.raises(DensekitError, match=r"emri_small\.dcm holds 10 frames without per-frame"):
        read_series(store / "emri_small.dcm")
    with pytest.raises(DensekitError, match=r"PhotometricInterpretation \['RGB'\]"):
        read_series(store / "SC_rgb.dcm")
    dicomdir = files / "dicomdirtests"
    brain = next(i for i in scan_series(dicomdir) if i.description == "Routine Brain")
    assert not any(f.name == "DICOMDIR" for i in scan_series(dicomdir) for f in i.files)
    with pytest.raises(DensekitError, match=r"161 slice\(s\) missing at -98\.23, -96\.98"):
        read_series(dicomdir, series_uid=brain.uid)


def test_undecodable_transfer_syntax_names_file_syntax_and_package():
    path = needs_shared_data(
        "pydicom-testfiles", "pydicom_data_store", "JPGLosslessP14SV1_1s_1f_8b.dcm"
    )
    for module in ("libjpeg", "gdcm"):
        try:
            __import__(module)
            pytest.skip(f"{module} is installed: this JPEG Lossless file decodes")
        except ImportError:
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DensekitError) as err:
            read_series(path)
    message = str(err.value)
    for text in (
        "JPGLosslessP14SV1_1s_1f_8b.dcm",
        "JPEG Lossless",
        "1.2.840.10008.1.2.4.70",
        "install pylibjpeg-libjpeg",
    ):
        assert text in message
