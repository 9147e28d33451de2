"""Masks on an image's grid: DICOM SEG written by highdicom and RTSTRUCT written by pydicom on
tiny synthetic series (written here), the dcmqi / rt-utils / pyradiomics / TotalSegmentator /
Kvasir files in ../shared/data, and the errors on bad input."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from helpers import needs_shared_data
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from densekit.data.dicom_series import read_series
from densekit.data.masks import label_map, read_label_map, read_png_mask, read_rtstruct, read_seg
from densekit.data.nifti import write_nifti
from densekit.errors import DensekitError

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
ROWS, COLS, SLICES = 12, 14, 3
# an oblique plane: rows and columns rotated about the patient's z axis
A = np.radians(20)
ROW_DIR = (np.cos(A), np.sin(A), 0.0)  # direction of increasing column index
COL_DIR = (-np.sin(A), np.cos(A), 0.0)  # direction of increasing row index
ORIGIN = np.array([-30.0, 12.0, 40.0])
STEP, PIXEL = 2.0, (0.8, 0.6)  # slice spacing; (between rows, between columns)


def write_ct(folder: Path, series_uid: str | None = None, frame_uid: str = "1.2.3.5") -> list:
    """Three CT slices on the oblique grid, files in reverse order; returns the datasets."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    normal = np.cross(ROW_DIR, COL_DIR)
    datasets = []
    for k in range(SLICES):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^J", "P1", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
            "1.2.3.4",
            series_uid,
            frame_uid,
        )
        ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "1", "20240101", "1200", ""
        ds.ReferringPhysicianName, ds.Manufacturer = "", "test"
        ds.Modality, ds.InstanceNumber, ds.SeriesNumber = "CT", SLICES - k, 1
        position = ORIGIN + k * STEP * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*ROW_DIR, *COL_DIR)]
        ds.PixelSpacing, ds.SliceThickness = list(PIXEL), STEP
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.full((ROWS, COLS), 40 + k, dtype=np.int16).tobytes()
        ds.save_as(folder / f"{SLICES - k:02d}.dcm", enforce_file_format=True)
        datasets.append(ds)
    return datasets


@pytest.fixture
def ct(tmp_path):
    datasets = write_ct(tmp_path / "ct")
    return read_series(tmp_path / "ct"), datasets


def lps(image, points_rc: list[tuple[float, float]], k: float) -> list[float]:
    """Patient coordinates of voxel coordinates (k, row, column), flattened for ContourData."""
    return [
        float(v)
        for r, c in points_rc
        for v in (image.affine @ np.array([k, r, c, 1.0]))[:3].round(6)
    ]


def write_rtstruct(path, image, rois: dict[str, list[tuple[list[float], str]]], **kw) -> None:
    """An RTSTRUCT with ROIs ``name -> [(ContourData, referenced SOPInstanceUID)]``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = kw.get("sop_class", RTSTRUCT)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = kw.get("modality", "RTSTRUCT")
    frame_uid = kw.get("frame_uid", image.frame_of_reference_uid)
    series = Dataset()
    series.SeriesInstanceUID = kw.get("series_uid", image.series_uid)
    study = Dataset()
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, frame_uid
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber, item.ContourSequence = number, []
        for data, uid in contours:
            contour = Dataset()
            contour.ContourGeometricType = kw.get("kind", "CLOSED_PLANAR")
            contour.NumberOfContourPoints, contour.ContourData = len(data) // 3, data
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CT_IMAGE, uid
            contour.ContourImageSequence = [ref]
            item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(item)
    ds.save_as(path, enforce_file_format=True)


def square(r0, c0, r1, c1):
    return [(r0, c0), (r0, c1), (r1, c1), (r1, c0)]


# ---------------------------------------------------------------------------- RTSTRUCT


def test_rtstruct_square_with_a_hole_exact_voxels(tmp_path, ct):
    image, _ = ct
    uid = image.sop_instance_uids[1]
    outer = lps(image, square(2, 3, 10, 11), 1)  # corners on voxel centres: 8 x 8 voxels
    hole = lps(image, square(4.5, 5.5, 7.5, 8.5), 1)  # corners between centres: 3 x 3 voxels
    other = lps(image, square(0.5, 0.5, 2.5, 1.5), 2)
    write_rtstruct(
        tmp_path / "rt.dcm",
        image,
        {"ring": [(outer, uid), (hole, uid)], "small": [(other, image.sop_instance_uids[2])]},
    )
    masks, names = read_rtstruct(tmp_path / "rt.dcm", image)
    assert names == ["ring", "small"] and masks.shape == (2, SLICES, ROWS, COLS)
    assert masks.dtype == np.uint8 and masks[0].sum() == 64 - 9
    assert masks[0, 1].sum() == 55 and masks[0, [0, 2]].sum() == 0
    assert not masks[0, 1, 5:8, 6:9].any() and masks[0, 1, 4:8, 4:9].sum() == 20 - 9
    assert masks[1, 2].sum() == 2 * 1 and masks[1, 2, 1:3, 1].all()
    labels = label_map(masks, names)
    assert set(np.unique(labels)) == {0, 1, 2} and (labels == 1).sum() == 55


def test_rtstruct_contour_errors_name_file_roi_and_value(tmp_path, ct):
    image, _ = ct
    uid = image.sop_instance_uids[0]
    off = lps(image, square(2, 3, 6, 7), 0.4)  # 0.4 slices = 0.8 mm off the plane
    write_rtstruct(tmp_path / "off.dcm", image, {"tumour": [(off, uid)]})
    with pytest.raises(
        DensekitError, match=r"off\.dcm: ROI 'tumour' contour 1 is 0\.8 mm off the slice plane 0"
    ):
        read_rtstruct(tmp_path / "off.dcm", image)
    outside = lps(image, square(2, 3, 6, 7), 3)
    write_rtstruct(tmp_path / "out.dcm", image, {"cord": [(outside, "1.9"), (off, uid)]})
    with pytest.raises(
        DensekitError,
        match=r"out\.dcm: ROI 'cord' contour 1 lies on slice plane 3, outside the image's 3 slices",
    ):
        read_rtstruct(tmp_path / "out.dcm", image)
    inside = lps(image, square(2, 3, 6, 7), 0)
    write_rtstruct(tmp_path / "warn.dcm", image, {"cord": [(outside, "1.9"), (inside, uid)]})
    with pytest.warns(
        UserWarning, match=r"warn\.dcm: contours left out: ROI 'cord': contour outside the image x1"
    ):
        masks, _ = read_rtstruct(tmp_path / "warn.dcm", image, on_outside="warn")
    assert masks[0, 0].sum() == 16
    wrong = image.sop_instance_uids[2]
    write_rtstruct(tmp_path / "ref.dcm", image, {"cord": [(inside, wrong)]})
    with pytest.raises(
        DensekitError,
        match=rf"ref\.dcm: ROI 'cord' contour 1 lies on slice 0 but references the image instance {wrong}, which is slice 2",
    ):
        read_rtstruct(tmp_path / "ref.dcm", image)
    write_rtstruct(tmp_path / "point.dcm", image, {"marker": [(inside[:3], uid)]}, kind="POINT")
    with pytest.warns(
        UserWarning, match=r"point\.dcm: contours left out: ROI 'marker': POINT contour of 1 point"
    ):
        masks, _ = read_rtstruct(tmp_path / "point.dcm", image)
    assert masks.sum() == 0
    with pytest.raises(DensekitError, match="on_outside='skip': use 'error' or 'warn'"):
        read_rtstruct(tmp_path / "warn.dcm", image, on_outside="skip")  # type: ignore[arg-type]


def test_rtstruct_of_another_image_names_both(tmp_path, ct):
    image, _ = ct
    data = lps(image, square(2, 3, 6, 7), 0)
    write_rtstruct(
        tmp_path / "other.dcm", image, {"a": [(data, "1.9")]}, frame_uid="7.7.7", series_uid="8.8.8"
    )
    with pytest.raises(
        DensekitError,
        match=rf"other\.dcm was drawn on another image: FrameOfReferenceUID \['7\.7\.7'\] and series \['8\.8\.8'\], but the image .* has FrameOfReferenceUID 1\.2\.3\.5 and series {image.series_uid}",
    ):
        read_rtstruct(tmp_path / "other.dcm", image)
    # a wrong FrameOfReferenceUID but the image's own series (as rt-utils writes): warned
    write_rtstruct(tmp_path / "same.dcm", image, {"a": [(data, "1.9")]}, frame_uid="7.7.7")
    with pytest.warns(
        UserWarning, match=r"same\.dcm: FrameOfReferenceUID \['7\.7\.7'\] is not the image's"
    ):
        masks, _ = read_rtstruct(tmp_path / "same.dcm", image)
    assert masks.sum() == 16
    write_rtstruct(
        tmp_path / "plan.dcm",
        image,
        {},
        modality="RTPLAN",
        sop_class="1.2.840.10008.5.1.4.1.1.481.5",
    )
    with pytest.raises(DensekitError, match=r"plan\.dcm is not an RTSTRUCT \(Modality RTPLAN"):
        read_rtstruct(tmp_path / "plan.dcm", image)


def test_rtutils_rtstruct_with_a_hole():
    root = needs_shared_data("dicom-rtstruct-ct-rtutils")
    image = read_series([root / "ct_1.dcm", root / "ct_2.dcm"])
    with pytest.warns(UserWarning, match="references the image's series"):  # rt-utils' FoR
        masks, names = read_rtstruct(root / "rt.dcm", image)
    assert names == ["ROI-1"] and masks[0, 1].sum() == 0
    # outer square -51..-27 mm, inner -47..-32 mm: 0.488 mm pixels, the inner one a hole
    rows, cols = np.nonzero(masks[0, 0])
    to_px = 1 / image.spacing[1]
    assert abs((rows.max() - rows.min() + 1) - 24 * to_px) <= 1
    assert abs(masks[0, 0].sum() - (24**2 - 15**2) * to_px**2) < 0.03 * masks[0, 0].sum()
    centre = round((125 - 39.5) * to_px)
    assert masks[0, 0, centre, centre] == 0 and masks[0, 0, centre, cols.min() + 2] == 1


def test_mim_rtstruct_four_rois_on_two_of_three_slices():
    root = needs_shared_data("dicom-rtstruct-ct-rtutils")
    image = read_series([root / "ct_1.dcm", root / "ct_2.dcm"])
    with pytest.raises(
        DensekitError, match=r"dummy_rt\.dcm: ROI 'ROI-1' contour 1 lies on slice plane 2, outside"
    ):
        read_rtstruct(root / "mim_rtstruct_4rois" / "dummy_rt.dcm", image)
    with pytest.warns(UserWarning, match=r"ROI 'ROI-4': contour outside the image x1"):
        masks, names = read_rtstruct(root / "mim_rtstruct_4rois" / "dummy_rt.dcm", image, "warn")
    assert names == ["ROI-1", "ROI-2", "ROI-3", "ROI-4"]
    assert (masks.sum(axis=(2, 3)) > 1000).all()  # every ROI on both slices
    inside = image.array[None].repeat(4, 0)[masks > 0]
    assert (inside > -300).all()  # in the phantom, not in the air around it
    assert (image.array > -300).mean() < 0.7
    assert label_map(masks, names).max() == 4  # the four ROIs are disjoint


# ---------------------------------------------------------------------------- DICOM SEG


def write_seg(path, sources, pixels, kind="BINARY", shuffle=True, drop_refs=False) -> None:
    """A SEG of ``pixels`` ((slices, rows, columns, segments) in ``sources`` order), written by
    highdicom; its frames shuffled, and optionally without per-frame source references."""
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k + 1,
            segment_label=f"organ {k + 1}",
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Liver,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for k in range(pixels.shape[-1])
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=kind,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
        max_fractional_value=100,
    )
    frames = seg.pixel_array.reshape(-1, ROWS, COLS)
    order = np.random.default_rng(0).permutation(len(frames)) if shuffle else range(len(frames))
    items = list(seg.PerFrameFunctionalGroupsSequence)
    seg.PerFrameFunctionalGroupsSequence = [items[i] for i in order]
    frames = frames[list(order)]
    seg.PixelData = pack_bits(frames) if kind == "BINARY" else frames.astype(np.uint8).tobytes()
    if drop_refs:
        for item in seg.PerFrameFunctionalGroupsSequence:
            del item.DerivationImageSequence
    seg.save_as(path)


def truth() -> np.ndarray:
    """Two overlapping segments on slices 0 and 2, nothing on slice 1."""
    pixels = np.zeros((SLICES, ROWS, COLS, 2), dtype=bool)
    pixels[0, 2:6, 3:9, 0] = pixels[2, 5:11, 1:4, 0] = True
    pixels[0, 4:8, 7:12, 1] = True  # overlaps segment 1 on slice 0 (2 x 2 voxels)
    return pixels


def test_seg_frames_matched_by_uid_in_shuffled_order(tmp_path, ct):
    image, sources = ct
    pixels = truth()
    write_seg(tmp_path / "seg.dcm", sources, pixels)
    order = [
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in pydicom.dcmread(tmp_path / "seg.dcm").PerFrameFunctionalGroupsSequence
    ]
    assert order != sorted(order, key=image.sop_instance_uids.index)  # really shuffled
    masks, names = read_seg(tmp_path / "seg.dcm", image)
    assert names == ["organ 1", "organ 2"] and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks, np.moveaxis(pixels, 3, 0))
    with pytest.raises(DensekitError, match=r"'organ 1' and 'organ 2' \(4 voxels\)"):
        label_map(masks, names)
    assert label_map(masks[:1], names[:1]).sum() == pixels[..., 0].sum()


def test_seg_without_references_placed_by_position(tmp_path, ct):
    image, sources = ct
    write_seg(tmp_path / "seg.dcm", sources, truth(), drop_refs=True)
    masks, _ = read_seg(tmp_path / "seg.dcm", image)
    np.testing.assert_array_equal(masks, np.moveaxis(truth(), 3, 0))


def test_fractional_seg(tmp_path, ct):
    image, sources = ct
    pixels = np.zeros((SLICES, ROWS, COLS, 1), dtype=np.float32)
    pixels[1, 3:5, 4:6, 0] = 0.25
    pixels[1, 5, 4:6, 0] = 1.0
    write_seg(tmp_path / "frac.dcm", sources, pixels, kind="FRACTIONAL")
    masks, _ = read_seg(tmp_path / "frac.dcm", image)
    assert masks.dtype == np.float32
    np.testing.assert_allclose(masks[0], pixels[..., 0], atol=0.01)
    assert label_map(masks, ["a"]).sum() == 2


def test_seg_errors_name_file_and_values(tmp_path, ct):
    image, sources = ct
    other = write_ct(tmp_path / "other", frame_uid=image.frame_of_reference_uid)
    write_seg(tmp_path / "other.dcm", other, truth())
    with pytest.raises(
        DensekitError,
        match=rf"other\.dcm segments another series: it references series {other[0].SeriesInstanceUID}, but the image .* is series {image.series_uid} \(2 source instances are not in the image",
    ):
        read_seg(tmp_path / "other.dcm", image)
    write_seg(tmp_path / "moved.dcm", sources, truth(), shuffle=False)
    ds = pydicom.dcmread(tmp_path / "moved.dcm")
    ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient[2] += 1
    ds.save_as(tmp_path / "moved.dcm")
    with pytest.raises(
        DensekitError,
        match=r"moved\.dcm: frame 1 references slice \d of the image \(SOPInstanceUID [0-9.]+\) at .* mm LPS, but lies at .*disagree on geometry",
    ):
        read_seg(tmp_path / "moved.dcm", image)
    write_seg(tmp_path / "norefs.dcm", sources, truth(), drop_refs=True)
    shifted = image.affine.copy()
    shifted[:3, 3] += 0.5 * shifted[:3, 0]  # half a slice: frames fall between the slices
    with pytest.raises(
        DensekitError,
        match=r"norefs\.dcm: frames at \[.*\] mm LPS are not on a slice of the image \(\(3, 12, 14\) voxels.*voxel coordinates \[1\.5, 0\.0, 0\.0\]",
    ):
        read_seg(tmp_path / "norefs.dcm", dataclasses.replace(image, affine=shifted))
    small = dataclasses.replace(image, array=image.array[:, :10])
    with pytest.raises(
        DensekitError,
        match=r"moved\.dcm: frames of 12 x 14 pixels, but the image's slices are 10 x 14",
    ):
        read_seg(tmp_path / "moved.dcm", small)
    with pytest.raises(DensekitError, match=r"01\.dcm is not a DICOM SEG \(Modality CT"):
        read_seg(tmp_path / "ct" / "01.dcm", image)


def test_dcmqi_liver_seg_matches_its_nrrd_voxel_for_voxel():
    root = needs_shared_data("dicom-seg-ct-dcmqi")
    image = read_series(root / "ct-3slice")
    masks, names = read_seg(root / "liver.dcm", image)
    assert names == ["Liver"] and masks.shape == (1, 3, 512, 512)
    reference = read_label_map(root / "nrrd_labelmaps" / "liver_seg.nrrd", image)
    np.testing.assert_array_equal(masks[0], reference.array == 1)
    assert (masks[0].sum(axis=(1, 2)) > 30000).all()  # liver on each of the three slices
    assert 0 < image.array[masks[0] > 0].mean() < 200  # soft tissue HU


def test_dcmqi_partial_overlaps_one_channel_per_segment():
    root = needs_shared_data("dicom-seg-ct-dcmqi")
    image = read_series(root / "ct-3slice")
    masks, names = read_seg(root / "partial_overlaps.dcm", image)
    assert names == ["GREEN", "ORANGE", "PURPLE", "LIGHT_BLUE", "DARK_BLUE"]
    # the converter's inputs: segment k is label k + 1 of one of the three label maps
    maps = [
        read_label_map(root / "nrrd_labelmaps" / f"partial_overlaps-{i}.nrrd", image)
        for i in (1, 2, 3)
    ]
    for k in range(5):
        (source,) = [m.array for m in maps if (m.array == k + 1).any()]
        np.testing.assert_array_equal(masks[k], source == k + 1)
    with pytest.raises(
        DensekitError, match=r"'GREEN' and 'ORANGE' \(3017 voxels\); 'GREEN' and 'PURPLE'"
    ):
        label_map(masks, names)


def test_seg_of_pet_images_that_are_not_here():
    root = needs_shared_data("dicom-seg-ct-dcmqi")
    image = read_series(root / "ct-3slice")
    with pytest.raises(
        DensekitError,
        match=rf"seg\.dcm segments another series: it references series 1\.3\.6\.1\.4\.1\.14519\S+, but the image .* is series {image.series_uid}",
    ):
        read_seg(root / "qin_headneck_sr_example" / "seg.dcm", image)


# -------------------------------------------------------------------- label maps, PNG masks


def test_label_maps_on_their_image_grid():
    root = needs_shared_data("nrrd-mri-ct-masks-pyradiomics")
    from densekit.data.nifti import read_nrrd

    image = read_nrrd(root / "prostate_phantom_subvolume.nrrd")
    labels = read_label_map(root / "prostate_phantom_subvolume-label.nrrd", image)
    assert set(np.unique(labels.array)) == {0, 1, 7, 8, 9}
    assert np.issubdtype(labels.array.dtype, np.integer)
    brain2 = read_nrrd(root / "brain2_image.nrrd")
    with pytest.raises(
        DensekitError,
        match=r"brain1_label\.nrrd \(\(25, 256, 256\) voxels of 6\.5 x 0\.781 x 0\.781 mm, origin \(-99\.61, 99\.61, -78\.00\) LPS\) is not on the grid of .*brain2_image\.nrrd \(\(23, 256, 256\) voxels",
    ):
        read_label_map(root / "brain1_label.nrrd", brain2)


def test_totalsegmentator_label_maps():
    root = needs_shared_data("ct-mr-organ-seg-totalsegmentator")
    from densekit.data.nifti import read_volume

    for image, labels in [
        ("ct_nifti/example_ct_sm.nii.gz", "ct_nifti/example_seg.nii.gz"),
        ("mr_nifti/example_mr_sm.nii.gz", "mr_nifti/example_seg_mr.nii.gz"),
    ]:
        volume = read_volume(root / image)
        seg = read_label_map(root / labels, volume)
        assert seg.array.dtype == np.uint8 and len(np.unique(seg.array)) > 20
    ct = read_series(root / "ct_dicom_series" / "example_ct_dicom")
    seg = read_label_map(root / "ct_dicom_series" / "example_seg_dicom.nii.gz", ct)  # rows flipped
    assert 40 < ct.array[seg.array == 5].mean() < 150  # liver (label 5) in soft-tissue HU


def test_label_map_bad_values_and_formats(tmp_path, ct):
    image, _ = ct
    values = np.zeros(image.shape, dtype=np.float32)
    values[1, 2, 3] = 2.0
    write_nifti(dataclasses.replace(image, array=values), tmp_path / "whole.nii.gz")
    assert read_label_map(tmp_path / "whole.nii.gz", image).array.dtype == np.uint8
    values[1, 2, 4] = 0.5
    write_nifti(dataclasses.replace(image, array=values), tmp_path / "prob.nii.gz")
    with pytest.raises(
        DensekitError, match=r"prob\.nii\.gz: label maps hold whole numbers, found 0\.5 \(1 voxels"
    ):
        read_label_map(tmp_path / "prob.nii.gz", image)
    with pytest.raises(
        DensekitError, match=r"01\.dcm: a label map is \.nii, \.nii\.gz, \.nrrd, \.nhdr"
    ):
        read_label_map(tmp_path / "ct" / "01.dcm", image)


def test_png_masks_raw_values(tmp_path):
    mask = np.zeros((5, 7), dtype=np.uint8)
    mask[1:3, 2:5] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_png_mask(tmp_path / "m.png"), mask)  # 255 stays 255
    Image.fromarray(np.stack([mask] * 3, -1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_png_mask(tmp_path / "rgb.png"), mask)
    colour = np.stack([mask, mask // 2, mask], -1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(
        DensekitError,
        match=r"colour\.png: a colour-coded RGB mask \(pixel row 1, column 2 is \[255, 127, 255\]\)",
    ):
        read_png_mask(tmp_path / "colour.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(DensekitError, match=r"bad\.png is not a readable image"):
        read_png_mask(tmp_path / "bad.png")


def test_kvasir_jpeg_mask_and_refuge_png():
    root = needs_shared_data("medical-2d-seg-samples")
    path = root / "kvasir-seg" / "masks" / "cju0qkwl35piu0993l0dewei2.jpg"
    with pytest.raises(
        DensekitError,
        match=r"cju0qkwl35piu0993l0dewei2\.jpg: a JPEG mask is lossy .*pass threshold=128",
    ):
        read_png_mask(path)
    mask = read_png_mask(path, threshold=128)
    assert mask.shape == Image.open(root / "kvasir-seg" / "images" / path.name).size[::-1]
    assert set(np.unique(mask)) == {0, 1} and 0.01 < mask.mean() < 0.9
    refuge = read_png_mask(root / "refuge" / "ann_dir" / "pseudo_g0001.png")
    assert refuge.shape == (531, 514) or refuge.shape == (514, 531)
    assert set(np.unique(refuge)) == {0, 1, 2}


def test_no_warnings_on_clean_input(tmp_path, ct):
    image, sources = ct
    write_seg(tmp_path / "seg.dcm", sources, truth())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_seg(tmp_path / "seg.dcm", image)
