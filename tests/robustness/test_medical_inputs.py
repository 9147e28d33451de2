"""The medical readers and writer on anonymised, damaged and unusual DICOM: a SEG of a series
whose type 2/3 attributes were removed, empty UIDs, a truncated file named damaged, a Siemens
mosaic refused by name, junk files and a mixed series in a folder."""

from __future__ import annotations

import math
import shutil
import subprocess
import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest
from helpers import needs_shared_data
from robust_cases import threshold_model

import densekit.inference.volume as infer_module
from densekit.cli import main
from densekit.data.dicom_series import read_series
from densekit.errors import DensekitError, InputImageError
from densekit.inference import segment_volume

# what anonymisers remove (type 2 and 3 attributes highdicom reads)
REMOVED = ("AccessionNumber", "SliceThickness", "ReferringPhysicianName", "StudyID",
           "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "Manufacturer",
           "SpacingBetweenSlices", "PositionReferenceIndicator")  # fmt: skip


def copy_series(tmp_path, edit, name="ct"):
    """The shared dcmqi 3-slice CT copied with ``edit(ds)`` applied to every file."""
    src = needs_shared_data("dicom-seg-ct-dcmqi", "ct-3slice")
    folder = tmp_path / name
    folder.mkdir()
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        edit(ds)
        ds.save_as(folder / f.name)
    return folder


def anonymise(ds) -> None:
    for keyword in REMOVED:
        if keyword in ds:
            delattr(ds, keyword)


# -- the SEG writer ---------------------------------------------------------------------------
def test_seg_of_an_anonymised_series(tmp_path, threshold):
    def edit(ds):
        anonymise(ds)
        ds.AccessionNumber = "ACC-778899"  # given, but never copied into the SEG
        ds.ReferringPhysicianName = "Dr^Who"

    ct = copy_series(tmp_path, edit)
    assert "SliceThickness" not in pydicom.dcmread(next(ct.iterdir()))
    out = tmp_path / "pred.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segment_volume("unused.ckpt", ct, out, progress=False)
    seg = pydicom.dcmread(out)
    for keyword in ("AccessionNumber", "ReferringPhysicianName", "StudyID", "PatientBirthDate",
                    "PatientSex", "StudyDate", "StudyTime"):  # fmt: skip
        assert keyword in seg and seg[keyword].value in ("", None), keyword
    assert "ACC-778899" not in str(seg) and "Dr^Who" not in str(seg)
    image = read_series(ct)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(image.spacing[0], abs=1e-5)
    frames = hd.seg.segread(out).get_pixels_by_source_instance(
        source_sop_instance_uids=list(image.sop_instance_uids), segment_numbers=[1]
    )
    assert frames.shape[0] == 3


def test_seg_of_a_series_without_a_needed_attribute_names_it(tmp_path, threshold, capsys):
    def edit(ds):
        del ds.FrameOfReferenceUID

    ct = copy_series(tmp_path, edit)
    with pytest.raises(DensekitError, match=r"lacks FrameOfReferenceUID, which a DICOM SEG needs"):
        segment_volume("unused.ckpt", ct, tmp_path / "pred.dcm", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]


def test_seg_of_a_series_with_empty_uids_says_so(tmp_path, threshold):
    def edit(ds):
        ds.SOPInstanceUID = ""

    ct = copy_series(tmp_path, edit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DensekitError) as err:
            segment_volume("unused.ckpt", ct, tmp_path / "pred.dcm", progress=False)
    assert "SOPInstanceUID is empty" in str(err.value) and "interpolated" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]


def tilt(ds, k: int, origin: list[float], degrees: float = 15.0) -> None:
    """Slice ``k`` of a CT acquired with the gantry tilted by ``degrees``: the image plane turns
    about the x axis while the table still steps along z, as on a tilted scanner."""
    t = math.radians(degrees)
    ds.ImageOrientationPatient = [1, 0, 0, 0, round(math.cos(t), 6), round(-math.sin(t), 6)]
    ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + 2.5 * k]
    ds.GantryDetectorTilt = degrees


def test_seg_of_a_gantry_tilted_anonymised_ct(tmp_path, threshold):
    """The tilted CT of the issue lacked AccessionNumber and SliceThickness: the SEG is written,
    its frames sit on the source planes and reference their instances, and (where dicom3tools
    is installed) dciodvfy finds no error."""
    src = needs_shared_data("dicom-seg-ct-dcmqi", "ct-3slice")
    real = sorted((pydicom.dcmread(f) for f in src.glob("*.dcm")),
                  key=lambda ds: float(ds.ImagePositionPatient[2]))  # fmt: skip
    origin = [float(v) for v in real[0].ImagePositionPatient]
    ct = tmp_path / "tilted"
    ct.mkdir()
    for k, ds in enumerate(real):
        anonymise(ds)
        tilt(ds, k, origin)
        ds.save_as(ct / f"{k}.dcm")
    image = read_series(ct)
    assert image.extra["gantry_tilt_deg"] == pytest.approx(15.0, abs=0.01)
    out = tmp_path / "pred.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segment_volume("unused.ckpt", ct, out, progress=False)
    seg = pydicom.dcmread(out)
    assert seg.AccessionNumber == "" and "SliceThickness" not in real[0]
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == (
        pytest.approx([float(v) for v in real[0].ImageOrientationPatient])
    )
    sources = {str(ds.SOPInstanceUID): [float(v) for v in ds.ImagePositionPatient] for ds in real}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in position] == pytest.approx(sources[uid])
    labels = hd.seg.segread(out).get_pixels_by_source_instance(
        source_sop_instance_uids=list(image.sop_instance_uids), segment_numbers=[1]
    )
    assert labels.shape[0] == 3 and labels.any()
    if shutil.which("dciodvfy"):
        report = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True)
        errors = [line for line in report.stderr.splitlines() if line.startswith("Error")]
        assert not errors, errors


def test_seg_of_totalsegmentator_s_series_names_its_empty_uids(tmp_path, threshold):
    """TotalSegmentator's example CT has empty SOP, series and study instance UIDs: refused
    with that reason (not "interpolated"), before any slice is segmented, nothing written."""
    ct = needs_shared_data(
        "ct-mr-organ-seg-totalsegmentator", "ct_dicom_series", "example_ct_dicom"
    )
    out = tmp_path / "pred.dcm"
    code = main(["volume", "--checkpoint", "unused.ckpt", "--input", str(ct),
                 "--output", str(out), "--no-progress"])  # fmt: skip
    assert code == 2
    with pytest.raises(DensekitError) as err:
        segment_volume("unused.ckpt", ct, out, progress=False)
    message = str(err.value)
    for uid in ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"):
        assert uid in message
    assert "interpolated" not in message and "FrameOfReferenceUID" not in message
    assert not list(tmp_path.iterdir())


def test_non_finite_model_outputs_write_no_labels(tmp_path, monkeypatch):
    import torch

    model = threshold_model()
    inner = model.trained.model

    class NaNAfterFirst(torch.nn.Module):
        def forward(self, x):
            y = inner(x)
            y[1:] = float("nan")  # every slice of a batch but its first
            return y

    model.trained.model = NaNAfterFirst()
    monkeypatch.setattr(infer_module, "load_volume_model", lambda *a, **k: model)
    ct = copy_series(tmp_path, lambda ds: None)
    with pytest.raises(DensekitError, match=r"NaN or infinite on slice 1 .*no labels are written"):
        segment_volume("unused.ckpt", ct, tmp_path / "o.nii.gz", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]


# -- damaged and unusual files ----------------------------------------------------------------
def test_a_truncated_dicom_is_named_damaged(tmp_path, capsys):
    truncated = needs_shared_data("pydicom-testfiles", "pydicom_test_files", "MR_truncated.dcm")
    with pytest.raises(InputImageError) as err:
        read_series(truncated)
    message = str(err.value)
    assert message.startswith(f"{truncated}: damaged: the pixel data holds")
    assert "install" not in message
    code = main(["volume", "--checkpoint", "unused.ckpt", "--input", str(truncated),
                 "--output", str(tmp_path / "o.nii.gz"), "--no-progress"])  # fmt: skip
    assert code == 2
    assert not list(tmp_path.iterdir())


def test_a_cut_copy_of_a_real_ct_slice_is_damaged(tmp_path):
    src = needs_shared_data("dicom-seg-ct-dcmqi", "ct-3slice")
    data = sorted(src.glob("*.dcm"))[0].read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-3000])
    with pytest.raises(InputImageError, match=r"cut.dcm: damaged: the pixel data holds \d+ bytes"):
        read_series(tmp_path / "cut.dcm")


def mosaic_from(ds) -> None:
    """A real MR slice marked as Siemens marks a mosaic (the geometry is then wrong if read as
    one slice)."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
    ds.add_new((0x0019, 0x0010), "LO", "SIEMENS MR HEADER")
    ds.add_new((0x0019, 0x100A), "US", 4)


@pytest.mark.parametrize("marks", ["image type and count", "count only"])
def test_a_siemens_mosaic_is_refused_by_name(tmp_path, marks):
    real = needs_shared_data("pydicom-testfiles", "pydicom_test_files", "MR_small.dcm")
    ds = pydicom.dcmread(real)
    mosaic_from(ds)
    if marks == "count only":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.save_as(tmp_path / "mosaic.dcm")
    with pytest.raises(InputImageError) as err:
        read_series(tmp_path / "mosaic.dcm")
    message = str(err.value)
    assert "mosaic.dcm: a Siemens mosaic" in message
    assert "NumberOfImagesInMosaic (0019,100A) = 4" in message
    assert "dcm2niix" in message
    from densekit.data.images import read_image

    with pytest.raises(InputImageError, match="a Siemens mosaic"):
        read_image(str(tmp_path / "mosaic.dcm"))


# -- several volumes in one series (GE/Philips multi-volume, enhanced multi-frame) ------------
def two_volumes(tmp_path, mark) -> object:
    """The shared 3-slice CT twice in one series, ``mark(ds, volume)`` telling the copies apart
    (as a GE or Philips scanner writes time points or diffusion b-values)."""

    def first(ds):
        mark(ds, 0)

    def second(ds):
        ds.SOPInstanceUID = str(ds.SOPInstanceUID) + ".2"
        mark(ds, 1)

    ct = copy_series(tmp_path, first)
    for f in copy_series(tmp_path, second, "second").iterdir():
        f.rename(ct / f"v2_{f.name}")
    return ct


def ge_time_points(ds, volume):
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.TemporalPositionIdentifier = volume + 1
    ds.NumberOfTemporalPositions = 2


def philips_b_values(ds, volume):
    ds.Manufacturer = "Philips Medical Systems"
    block = ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
    block.add_new(0x03, "FL", [0.0, 1000.0][volume])


@pytest.mark.parametrize(
    ("mark", "named"),
    [(ge_time_points, r"2 volumes at the same slice positions \(GE MEDICAL SYSTEMS multi-volume "
      r"series: time points\), told apart by TemporalPositionIdentifier \(0020,0100\) = 1, 2"),
     (philips_b_values, r"\(Philips Medical Systems multi-volume series: diffusion b-values\), "
      r"told apart by Philips diffusion b-factor \(2001,1003\) = 0.0, 1000.0")],
)  # fmt: skip
def test_a_multi_volume_series_is_refused_by_name(tmp_path, mark, named, capsys, threshold):
    ct = two_volumes(tmp_path, mark)
    with pytest.raises(InputImageError, match=named) as err:
        read_series(ct)
    assert "split it into one series per volume" in str(err.value)
    out = tmp_path / "o.nii.gz"
    code = main(["volume", "--checkpoint", "unused.ckpt", "--input", str(ct),
                 "--output", str(out), "--no-progress"])  # fmt: skip
    assert code == 2 and not out.exists()
    assert "multi-volume series" in capsys.readouterr().err


def test_a_diffusion_series_of_b0_and_directions_is_refused_by_name(tmp_path):
    """b = 0 and three directions at b = 1000, as a DWI series holds them: no single attribute
    differs on every slice at a position, but b-value and direction tell the volumes apart."""
    directions = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]

    def volume(k):
        def mark(ds):
            ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k}"
            ds.Manufacturer = "SIEMENS"
            ds.DiffusionBValue = 0.0 if k == 0 else 1000.0
            ds.DiffusionGradientOrientation = directions[k]

        return mark

    ct = copy_series(tmp_path, volume(0))
    for k in (1, 2, 3):
        for f in copy_series(tmp_path, volume(k), f"v{k}").iterdir():
            f.rename(ct / f"v{k}_{f.name}")
    with pytest.raises(InputImageError) as err:
        read_series(ct)
    message = str(err.value)
    assert (
        "4 volumes at the same slice positions (SIEMENS multi-volume series: diffusion" in message
    )
    assert "DiffusionBValue (0018,9087) = 0.0, 1000.0 and DiffusionGradientOrientation" in message


def test_duplicates_that_no_attribute_tells_apart_keep_the_duplicate_message(tmp_path):
    ct = two_volumes(tmp_path, lambda ds, volume: None)
    with pytest.raises(InputImageError, match="duplicate slices") as err:
        read_series(ct)
    assert "multi-volume" not in str(err.value)


def enhanced_mr(positions: int, time_points: int):
    """An enhanced multi-frame MR built from the real MR_small slice: ``positions`` x
    ``time_points`` frames, FrameContentSequence's TemporalPositionIndex telling them apart."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    real = needs_shared_data("pydicom-testfiles", "pydicom_test_files", "MR_small.dcm")
    ds = pydicom.dcmread(real)
    pixels = ds.pixel_array
    origin = [float(v) for v in ds.ImagePositionPatient]
    shared = Dataset()
    measures, orientation = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = ds.PixelSpacing, 1.0
    orientation.ImageOrientationPatient = ds.ImageOrientationPatient
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    normal = np.cross([float(v) for v in ds.ImageOrientationPatient[:3]],
                      [float(v) for v in ds.ImageOrientationPatient[3:]])  # fmt: skip
    per_frame, stack = [], []
    for t in range(time_points):
        for z in range(positions):
            item, where, content = Dataset(), Dataset(), Dataset()
            where.ImagePositionPatient = [
                round(o + 2.0 * z * n, 4) for o, n in zip(origin, normal, strict=True)
            ]
            content.TemporalPositionIndex = t + 1
            item.PlanePositionSequence = Sequence([where])
            item.FrameContentSequence = Sequence([content])
            per_frame.append(item)
            stack.append(pixels + 10 * t)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.NumberOfFrames = len(stack)
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack(stack).astype(pixels.dtype).tobytes()
    return ds


def test_an_enhanced_multi_frame_with_time_points_is_refused_by_name(tmp_path):
    enhanced_mr(3, 1).save_as(tmp_path / "one.dcm")
    assert read_series(tmp_path / "one.dcm").array.shape == (3, 64, 64)  # one volume: read
    enhanced_mr(3, 2).save_as(tmp_path / "two.dcm")
    with pytest.raises(InputImageError) as err:
        read_series(tmp_path / "two.dcm")
    assert "2 volumes at the same slice positions" in str(err.value)
    assert "TemporalPositionIndex (0020,9128) = 1, 2" in str(err.value)


def test_junk_files_in_a_dicom_folder_are_named_or_skipped(tmp_path):
    ct = copy_series(tmp_path, lambda ds: None)
    (ct / "notes.txt").write_text("not dicom")
    (ct / "DICOMDIR").write_bytes(b"\x00" * 10)
    (ct / ".DS_Store").write_bytes(b"\x00\x01")
    try:
        image = read_series(ct)
    except InputImageError as err:  # refusing is fine if the junk file is named
        assert any(n in str(err) for n in ("notes.txt", "DICOMDIR", ".DS_Store")), err
    else:
        assert image.array.shape[0] == 3


def test_two_series_in_a_folder_name_their_uids_once_and_no_description(tmp_path):
    def relabel(ds):
        ds.SeriesInstanceUID = "1.2.3.4.5"
        ds.SeriesDescription = "PATIENT SECRET PROTOCOL"
        for item in ("SOPInstanceUID",):
            setattr(ds, item, str(ds[item].value) + ".9")

    a = copy_series(tmp_path, lambda ds: None, "a")
    copy_series(tmp_path, relabel, "b")
    for f in (tmp_path / "b").iterdir():
        f.rename(a / f"b_{f.name}")
    with pytest.raises(DensekitError) as err:
        read_series(a)
    message = str(err.value)
    assert message.count("1.2.3.4.5") == 1, message
    assert "SECRET" not in message


def test_missing_and_duplicate_slices(tmp_path):
    ct = copy_series(tmp_path, lambda ds: None)
    files = sorted(ct.iterdir())
    dup = pydicom.dcmread(files[0])
    dup.SOPInstanceUID = str(dup.SOPInstanceUID) + ".7"
    dup.save_as(ct / "dup.dcm")
    with pytest.raises(DensekitError, match=r"(?i)duplicate|same position"):
        read_series(ct)
    (ct / "dup.dcm").unlink()
    files[1].unlink()  # the middle one of three: two slices left, evenly spaced
    image = read_series(ct)
    assert image.array.shape[0] == 2
    assert np.isfinite(image.array).all()
