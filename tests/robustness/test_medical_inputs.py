"""The medical readers and writer on anonymised, damaged and unusual DICOM: a SEG of a series
whose type 2/3 attributes were removed, empty UIDs, a truncated file named damaged, a Siemens
mosaic refused by name, junk files and a mixed series in a folder."""

from __future__ import annotations

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
    assert "empty SOPInstanceUID" in str(err.value) and "interpolated" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]


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
