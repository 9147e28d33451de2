"""Volume inference: labels on the input grid (NIfTI) or a DICOM SEG on the source slices, Dice
and HD95 against references, bad inputs refused with nothing written, no patient data out."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from helpers import NAMES, needs_shared_data, random_tiny_weights, threshold_model
from pydicom.uid import generate_uid

from densekit.cli import main
from densekit.data.masks import read_seg
from densekit.data.nifti import reorient_like
from densekit.errors import DensekitError
from densekit.inference import volume as infer_module
from densekit.inference.volume import (
    load_volume_model,
    predict_volume,
    segment_volume,
)
from densekit.medical import Volume, read_series, read_volume, write_nifti
from densekit.medical.metrics import segmentation_metrics
from densekit.medical.slices import (
    Intensity,
    SliceSettings,
    display_order,
    plane_axis,
    slice_input,
)
from densekit.models import OutputSpec
from densekit.tasks import DepthTask, SegmentationTask

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
SLICES = {"plane": "axial", "context": 0, "intensity": {"ct_window": "soft_tissue"}}
PATIENT_NAME, PATIENT_ID = "Doe^Janet", "PID-9731"


def save_task(task, path: Path, datamodule: dict | None) -> str:
    """A checkpoint as Lightning writes it (state dict, hyper-parameters, densekit record), plus
    the slice data module's hyper-parameters when given."""
    checkpoint = {
        "state_dict": task.state_dict(),
        "hyper_parameters": dict(task.hparams),
        "pytorch-lightning_version": "2.6.0",
    }
    task.on_save_checkpoint(checkpoint)
    if datamodule is not None:
        checkpoint["datamodule_hyper_parameters"] = datamodule
    torch.save(checkpoint, path)
    return str(path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    weights = random_tiny_weights(root / "tiny.pth", **TINY)
    common = dict(weights=weights, backbone_overrides=TINY, scale=1.0)
    torch.manual_seed(0)
    seg = SegmentationTask(num_classes=3, class_names=NAMES, **common)
    return {
        "seg": save_task(seg, root / "seg.ckpt", SLICES),
        "seg_2_5d": save_task(
            seg, root / "seg25.ckpt", {**SLICES, "context": 1, "plane": "coronal"}
        ),
        "bare": save_task(seg, root / "bare.ckpt", None),
        "depth": save_task(DepthTask(**common), root / "depth.ckpt", SLICES),
        "seg_detail": save_task(  # the pixel-detail options of the heads
            SegmentationTask(
                num_classes=3,
                class_names=NAMES,
                input_upscale=1.5,
                upsampler="guided",
                pixel_branch=4,
                **common,
            ),
            root / "seg_detail.ckpt",
            {**SLICES, "context": 1, "plane": "coronal"},
        ),
    }


def expected_labels(hu: np.ndarray) -> np.ndarray:
    c = Intensity(ct_window="soft_tissue").apply(hu)
    return np.where(c > 0.9, 2, np.where(c > 0.5, 1, 0)).astype(np.uint8)


def box_volume(shift: int = 0, spacing=(2.5, 0.8, 0.6)) -> Volume:
    hu = np.full((16, 18, 20), -1000.0, dtype=np.float32)
    hu[3 + shift : 8 + shift, 4:12, 5:15] = 100.0  # soft tissue window: 0.65 -> class 1
    hu[4 + shift : 6 + shift, 6:9, 7:10] = 230.0  # 0.975 -> class 2
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-10.0, 20.0, 30.0)
    return Volume(hu, affine)


@pytest.fixture
def ct_copy(tmp_path):
    """The dcmqi 3-slice CT with a known patient, extra optional patient/study tags and an
    institution that must not reach the SEG."""
    src = needs_shared_data("dicom-seg-ct-dcmqi", "ct-3slice")
    folder = tmp_path / "ct"
    folder.mkdir()
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID, ds.PatientAge = PATIENT_NAME, PATIENT_ID, "042Y"
        ds.PatientComments, ds.InstitutionName = "allergic to X", "Saint Example Hospital"
        ds.OtherPatientIDsSequence = [pydicom.Dataset()]
        ds.OtherPatientIDsSequence[0].PatientID = "OTHER-55"
        ds.save_as(folder / f.name)
    return folder


# ----------------------------------------------------------------------------- predictions
def test_known_labels_on_the_input_grid_in_every_plane():
    volume = box_volume()
    for plane, context in (("axial", 0), ("coronal", 1), ("sagittal", 2)):
        model = threshold_model(SliceSettings(plane, context, Intensity(ct_window="soft_tissue")))
        labels = predict_volume(model, volume, batch_size=3, progress=False)
        assert labels.array.dtype == np.uint8 and labels.same_grid(volume)
        np.testing.assert_array_equal(labels.array, expected_labels(volume.array))


@pytest.mark.parametrize("name", ["seg_2_5d", "seg_detail"])
def test_checkpoint_volume_equals_its_forward_on_slice_inputs(ckpts, name):
    volume = box_volume()
    model = load_volume_model(ckpts[name])
    assert (model.settings.plane, model.settings.context) == ("coronal", 1)
    labels = predict_volume(model, volume, batch_size=4, progress=False).array
    display = display_order(volume, "coronal")
    scaled = display.apply(Intensity(ct_window="soft_tissue").apply(volume.array))
    shown = display.apply(labels)
    assert shown.shape[0] == volume.shape[plane_axis(volume, "coronal")]
    with torch.no_grad():
        for i in range(shown.shape[0]):
            x = torch.from_numpy(slice_input(scaled, 0, i, context=1))[None]
            want = model.trained.model(x).argmax(1)[0].numpy()
            np.testing.assert_array_equal(shown[i], want)


def test_storage_order_does_not_change_what_the_model_sees(tmp_path):
    """A model that marks the top half of each slice: the DICOM-like volume and its RAS
    canonical NIfTI (rows and columns stored reversed) get the same labels in patient space."""
    import nibabel as nib

    class TopHalf(torch.nn.Module):
        def forward(self, x):
            rows = torch.arange(x.shape[-2], dtype=x.dtype)[:, None].expand(x.shape[-2:])
            top = (rows < x.shape[-2] // 2).to(x.dtype)
            return torch.stack([1 - top, top, 0 * top], dim=0)[None].expand(len(x), -1, -1, -1)

    volume = box_volume()
    write_nifti(volume, tmp_path / "ct.nii.gz")
    nib.save(nib.as_closest_canonical(nib.load(tmp_path / "ct.nii.gz")), tmp_path / "ras.nii.gz")
    canonical = read_volume(tmp_path / "ras.nii.gz")
    for plane in ("axial", "coronal", "sagittal"):
        model = threshold_model(SliceSettings(plane, 0, Intensity(ct_window="soft_tissue")))
        model.trained.model = TopHalf()
        a = predict_volume(model, volume, progress=False)
        b = predict_volume(model, canonical, progress=False)
        assert b.same_grid(canonical)
        np.testing.assert_array_equal(reorient_like(b, a).array, a.array, err_msg=plane)
        if plane != "axial":  # superior at the top: the top half is the upper (+z) half
            z = a.affine[2, :3] @ np.indices(a.shape).reshape(3, -1)
            top = a.array.reshape(-1) == 1
            assert z[top].min() >= z[~top].max() - 1e-6, plane


def test_nifti_output_has_the_input_geometry(ckpts, tmp_path):
    write_nifti(box_volume(), tmp_path / "ct.nii.gz")
    code = main(
        [
            "volume",
            "--checkpoint",
            ckpts["seg"],
            "--input",
            str(tmp_path / "ct.nii.gz"),
            "--output",
            str(tmp_path / "pred.nii.gz"),
            "--no-progress",
        ]
    )
    assert code == 0
    image, pred = read_volume(tmp_path / "ct.nii.gz"), read_volume(tmp_path / "pred.nii.gz")
    assert pred.same_grid(image, tol_mm=1e-4) and pred.array.dtype == np.uint8
    assert set(np.unique(pred.array)) <= {0, 1, 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ct.nii.gz",
        "pred.nii.gz",
        "pred.nii.gz.metrics.json",
    ]


# ------------------------------------------------------------------------------- DICOM SEG
def test_seg_frames_land_on_their_source_slices(ct_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(infer_module, "load_volume_model", lambda *a, **k: threshold_model())
    out = tmp_path / "pred.dcm"
    segment_volume("unused.ckpt", ct_copy, out, progress=False)
    image = read_series(ct_copy)
    want = expected_labels(image.array)
    assert (want == 1).any() and (want == 2).any()
    seg = hd.seg.segread(out)
    assert seg.SeriesDescription == "densekit threshold segmentation"
    assert [d.SegmentLabel for d in seg.SegmentSequence] == NAMES[1:]
    refs = seg.ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == image.series_uid
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(image.sop_instance_uids), segment_numbers=[1, 2]
    )  # (slice, row, column, segment) in the image's slice order
    for k in (1, 2):
        np.testing.assert_array_equal(frames[..., k - 1], want == k)
    sources = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in ct_copy.iterdir()}
    for item in seg.PerFrameFunctionalGroupsSequence:  # positions are the sources' positions
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = item.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(position, sources[uid].ImagePositionPatient, atol=1e-3)
    masks, names = read_seg(out, image)  # and densekit's own reader agrees
    assert names == NAMES[1:] and (masks[1] == (want == 2)).all()


def test_seg_copies_only_the_required_patient_and_study_tags(ct_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(infer_module, "load_volume_model", lambda *a, **k: threshold_model())
    out = tmp_path / "pred.dcm"
    segment_volume("unused.ckpt", ct_copy, out, progress=False)
    seg = pydicom.dcmread(out)
    assert (seg.PatientName, seg.PatientID) == (PATIENT_NAME, PATIENT_ID)  # the standard's
    text = str(seg)
    for leak in ("042Y", "allergic", "Saint Example", "OTHER-55"):
        assert leak not in text
    item = seg.SegmentSequence[0]
    assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"
    assert item.SegmentAlgorithmType == "AUTOMATIC"
    assert item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "densekit"


def test_real_checkpoint_seg_round_trip_scores_itself(ckpts, ct_copy, tmp_path, capsys):
    out, again = tmp_path / "pred.dcm", tmp_path / "again.nii.gz"
    args = ["volume", "--checkpoint", ckpts["seg"], "--input", str(ct_copy), "--no-progress"]
    assert main([*args, "--output", str(out)]) == 0
    assert main([*args, "--output", str(again), "--reference", str(out)]) == 0
    record = json.loads((tmp_path / "again.nii.gz.metrics.json").read_text())
    assert record["reference"]["matched_by"] == "name"
    for name in NAMES[1:]:  # the random head predicts both classes on this CT
        m = record["metrics"]["classes"][name]
        assert m["voxels_reference"] > 0 and (m["dice"], m["hd95_mm"]) == (1.0, 0.0)
    printed = capsys.readouterr()
    sidecar = (tmp_path / "again.nii.gz.metrics.json").read_text()
    for text in (printed.out, printed.err, sidecar):
        assert PATIENT_NAME not in text and PATIENT_ID not in text and "Doe" not in text
        assert str(ct_copy) not in text
    assert record["input"]["series_uid_sha256"] and record["model"]["backbone"] == "dinov2_vits14"


# --------------------------------------------------------------------------------- metrics
def test_dice_and_hd95_against_the_reference_and_a_shifted_one(tmp_path, monkeypatch):
    monkeypatch.setattr(infer_module, "load_volume_model", lambda *a, **k: threshold_model())
    volume = box_volume()
    write_nifti(volume, tmp_path / "ct.nii.gz")
    truth = Volume(expected_labels(volume.array), volume.affine)
    write_nifti(truth, tmp_path / "same.nii.gz")
    shifted = Volume(expected_labels(box_volume(shift=2).array), volume.affine)
    write_nifti(shifted, tmp_path / "shifted.nii.gz")
    run = {"progress": False}
    same = segment_volume(
        "x", tmp_path / "ct.nii.gz", tmp_path / "a.nii", reference=tmp_path / "same.nii.gz", **run
    )
    assert same["record"]["metrics"]["mean_dice"] == 1.0
    assert same["record"]["metrics"]["mean_hd95_mm"] == 0.0
    moved = segment_volume(
        "x",
        tmp_path / "ct.nii.gz",
        tmp_path / "b.nii",
        reference=tmp_path / "shifted.nii.gz",
        **run,
    )
    scores = moved["record"]["metrics"]["classes"]
    assert scores["soft"]["hd95_mm"] == scores["bright"]["hd95_mm"] == 2 * 2.5  # two slices
    p, r = truth.array == 1, shifted.array == 1
    assert scores["soft"]["dice"] == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()))
    assert scores["bright"]["dice"] == 0.0  # two slices thick, moved by two
    sidecar = json.loads((tmp_path / "b.nii.metrics.json").read_text())
    assert sidecar["metrics"]["classes"] == scores


def test_no_stale_sidecar_beside_a_new_output(tmp_path, monkeypatch):
    monkeypatch.setattr(infer_module, "load_volume_model", lambda *a, **k: threshold_model())
    volume = box_volume()
    write_nifti(volume, tmp_path / "ct.nii.gz")
    write_nifti(Volume(expected_labels(volume.array), volume.affine), tmp_path / "ref.nii.gz")
    run = {"progress": False}
    scored = segment_volume(
        "x", tmp_path / "ct.nii.gz", tmp_path / "o.nii.gz", reference=tmp_path / "ref.nii.gz", **run
    )
    assert (
        json.loads((tmp_path / "o.nii.gz.metrics.json").read_text())["metrics"]["mean_dice"] == 1.0
    )
    again = segment_volume("x", tmp_path / "ct.nii.gz", tmp_path / "o.nii.gz", **run)
    assert again["outputs"] == [str(tmp_path / "o.nii.gz"), str(tmp_path / "o.nii.gz.metrics.json")]
    record = json.loads((tmp_path / "o.nii.gz.metrics.json").read_text())
    assert record["metrics"] is None and record["reference"] is None
    assert record["input"] == scored["record"]["input"]


def test_reference_label_map_through_the_checkpoint_label_map(tmp_path, monkeypatch):
    """Raw TotalSegmentator-like values (5, 7) become the classes training made of them; what
    training ignored (unlisted: ignore) is not scored."""
    model = threshold_model()
    model.mask_classes = {"label_map": {5: 1, "7": 2}, "unlisted": "ignore"}
    monkeypatch.setattr(infer_module, "load_volume_model", lambda *a, **k: model)
    volume = box_volume()
    write_nifti(volume, tmp_path / "ct.nii.gz")
    truth = expected_labels(volume.array)
    raw = np.choose(truth, [0, 5, 7]).astype(np.uint8)
    raw[12:, 4:12, 5:15] = 9  # unlisted: ignored, though the model calls it background
    raw[4, 6, 7] = 9
    write_nifti(Volume(raw, volume.affine), tmp_path / "ref.nii.gz")
    out = segment_volume(
        "x",
        tmp_path / "ct.nii.gz",
        tmp_path / "o.nii",
        reference=tmp_path / "ref.nii.gz",
        progress=False,
    )
    record = out["record"]
    assert record["reference"]["matched_by"] == "label_map of the checkpoint"
    assert record["metrics"]["mean_dice"] == 1.0
    assert record["metrics"]["classes"]["bright"]["voxels_reference"] == (truth == 2).sum() - 1


def test_reference_seg_names_case_insensitive_or_checkpoint_segments(
    ct_copy, tmp_path, monkeypatch
):
    upper = threshold_model()
    upper.trained.output = OutputSpec.segmentation(3, ["background", "SOFT", "Bright"])
    model = upper
    monkeypatch.setattr(infer_module, "load_volume_model", lambda *a, **k: model)
    segment_volume("x", ct_copy, tmp_path / "ref.dcm", progress=False)  # segments SOFT, Bright
    model = threshold_model()  # classes soft, bright: matched by name, whatever the case
    run = {"reference": tmp_path / "ref.dcm", "progress": False}
    record = segment_volume("x", ct_copy, tmp_path / "a.nii.gz", **run)["record"]
    assert record["reference"]["matched_by"] == "name"
    assert record["reference"]["segments"] == {"SOFT": "soft", "Bright": "bright"}
    assert record["metrics"]["mean_dice"] == 1.0
    model = threshold_model()  # the checkpoint's own segments mapping wins
    model.mask_classes = {"segments": {"SOFT": 2, "Bright": 1}}
    record = segment_volume("x", ct_copy, tmp_path / "b.nii.gz", **run)["record"]
    assert record["reference"]["segments"] == {"SOFT": "bright", "Bright": "soft"}
    assert record["metrics"]["classes"]["soft"]["dice"] == 0.0
    model = threshold_model()  # no name matches: refused, never matched by segment order
    model.trained.output = OutputSpec.segmentation(3, ["background", "liver", "spleen"])
    with pytest.raises(
        DensekitError, match=r"segment\(s\) SOFT, Bright of its segments .* \(liver, spleen\)"
    ):
        segment_volume("x", ct_copy, tmp_path / "c.nii.gz", **run)
    assert not (tmp_path / "c.nii.gz").exists()


def test_on_missing_flag_reaches_the_reader(tmp_path, monkeypatch):
    monkeypatch.setattr(infer_module, "load_volume_model", lambda *a, **k: threshold_model())
    seen = []

    def reader(path, series_uid=None, on_missing="error"):
        seen.append(on_missing)
        return box_volume()

    monkeypatch.setattr(infer_module, "read_volume", reader)
    (tmp_path / "ct").mkdir()
    argv = [
        "volume",
        "--checkpoint",
        "x.ckpt",
        "--input",
        str(tmp_path / "ct"),
        "--output",
        str(tmp_path / "o.nii.gz"),
        "--no-progress",
    ]
    assert main([*argv, "--on-missing", "resample"]) == 0 and main(argv) == 0
    assert seen == ["resample", "error"]


def test_metrics_undefined_cases_and_bad_labels():
    ref = np.zeros((4, 5, 6), np.uint8)
    ref[1:3, 1:4, 1:4] = 1
    scores = segmentation_metrics(ref, ref, NAMES, (1.0, 1.0, 1.0))
    assert scores["classes"]["bright"] == {
        "dice": None,
        "hd95_mm": None,
        "voxels_predicted": 0,
        "voxels_reference": 0,
    }
    missed = segmentation_metrics(np.zeros_like(ref), ref, NAMES, (1.0, 1.0, 1.0))
    assert missed["classes"]["soft"]["dice"] == 0.0 and missed["classes"]["soft"]["hd95_mm"] is None
    with pytest.raises(DensekitError, match="reference label 7 is not one of the checkpoint's"):
        segmentation_metrics(ref, ref * 7, NAMES, (1.0, 1.0, 1.0))


# ------------------------------------------------------------------------------ bad inputs
def two_series(folder: Path, ct: Path) -> None:
    folder.mkdir()
    for f in ct.iterdir():
        ds = pydicom.dcmread(f)
        ds.save_as(folder / f"a{f.name}")
        ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3.999", generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"b{f.name}")


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(ckpts, ct_copy, tmp_path, capsys):
    write_nifti(box_volume(), tmp_path / "ct.nii.gz")
    write_nifti(box_volume(spacing=(2.0, 0.8, 0.6)), tmp_path / "other_grid.nii.gz")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no DICOM here")
    two_series(tmp_path / "two", ct_copy)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.ckpt")
    nifti, seg = str(tmp_path / "ct.nii.gz"), ckpts["seg"]
    cases = [
        ([seg, str(tmp_path / "missing"), "o.nii.gz"], r"input .*missing: no such file"),
        ([seg, str(tmp_path / "empty"), "o.nii.gz"], r"empty"),
        ([seg, str(tmp_path / "two"), "o.nii.gz"], r"2 image series.*1\.2\.3\.999"),
        ([ckpts["depth"], nifti, "o.nii.gz"], r"a DepthTask checkpoint; densekit volume runs"),
        ([str(tmp_path / "plain.ckpt"), nifti, "o.nii.gz"], r"not a checkpoint of densekit"),
        ([seg, nifti, "o.png"], r"unknown output format '\.png'; use \.nii, \.nii\.gz, \.dcm"),
        ([seg, nifti, "o.dcm"], r"is not DICOM; write \.nii\.gz instead"),
        ([ckpts["bare"], nifti, "o.nii.gz"], r"has no plane .*give plane \(--plane\)"),
        ([seg, nifti, "o.nii.gz", "--plane", "coronal"], r"trained with plane 'axial'"),
        (
            [seg, nifti, "o.nii.gz", "--reference", str(tmp_path / "other_grid.nii.gz")],
            r"other_grid.nii.gz .* is not on the grid of",
        ),
    ]
    for (ckpt, source, output, *extra), message in cases:
        out = tmp_path / output
        before = sorted(p.name for p in tmp_path.iterdir())
        argv = ["volume", "--checkpoint", ckpt, "--input", source, "--output", str(out)]
        assert main([*argv, "--no-progress", *extra]) == 2, message
        err = capsys.readouterr().err.strip()
        assert err.startswith("densekit volume: error: ")
        assert re.search(message, err, re.S), err
        assert len(err.splitlines()) == 1, err  # the series listing too: one line
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_bare_checkpoint_runs_with_the_flags(ckpts, tmp_path):
    write_nifti(box_volume(), tmp_path / "ct.nii.gz")
    argv = [
        "volume",
        "--checkpoint",
        ckpts["bare"],
        "--input",
        str(tmp_path / "ct.nii.gz"),
        "--output",
        str(tmp_path / "o.nii.gz"),
        "--no-progress",
        "--plane",
        "sagittal",
        "--context",
        "1",
        "--ct-window",
        "40,400",
    ]
    assert main(argv) == 0 and (tmp_path / "o.nii.gz").is_file()
    with pytest.raises(DensekitError, match="percentiles"):
        load_volume_model(ckpts["bare"], plane="axial", context=0, intensity={"percentiles": [9]})


def test_checkpoint_of_the_slice_data_module_runs_as_trained(tmp_path):
    """Two training steps with MedicalSegmentationDataModule, saved by Lightning: the volume
    command reads plane, context and intensity from the checkpoint."""
    import lightning as L

    from densekit.medical.data import MedicalSegmentationDataModule

    volume = box_volume()
    write_nifti(volume, tmp_path / "ct.nii.gz")
    write_nifti(Volume(expected_labels(volume.array), volume.affine), tmp_path / "lab.nii.gz")
    data = MedicalSegmentationDataModule(
        intensity={"ct_window": [40, 400]},
        cases=[{"image": str(tmp_path / "ct.nii.gz"), "mask": str(tmp_path / "lab.nii.gz")}],
        val_cases=[{"image": str(tmp_path / "ct.nii.gz"), "mask": str(tmp_path / "lab.nii.gz")}],
        plane="coronal",
        context=1,
        batch_size=4,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weights = random_tiny_weights(tmp_path / "w.pth", **TINY)
        task = SegmentationTask(
            num_classes=3, class_names=NAMES, weights=weights, backbone_overrides=TINY, scale=1
        )
        trainer = L.Trainer(
            max_steps=2,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        trainer.fit(task, data)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    model = load_volume_model(tmp_path / "m.ckpt")
    assert model.settings == SliceSettings("coronal", 1, Intensity(ct_window=(40.0, 400.0)))
    argv = [
        "volume",
        "--checkpoint",
        str(tmp_path / "m.ckpt"),
        "--input",
        str(tmp_path / "ct.nii.gz"),
        "--output",
        str(tmp_path / "p.nii.gz"),
        "--no-progress",
    ]
    assert main(argv) == 0 and read_volume(tmp_path / "p.nii.gz").same_grid(volume, 1e-4)


def test_seg_codes_are_carried_from_the_training_seg_or_the_class_name(
    ct_copy, tmp_path, monkeypatch
):
    """The training SEG's "Liver" segment became class 1: its codes are carried; class 2's
    name is no SNOMED CT concept: generic "Tissue", said by a warning and the sidecar."""
    liver_seg = needs_shared_data("dicom-seg-ct-dcmqi", "liver.dcm")
    model = threshold_model()
    model.trained.data = {"cases": [{"image": str(ct_copy), "mask": str(liver_seg)}]}
    model.mask_classes = {"segments": {"Liver": 1}}
    monkeypatch.setattr(infer_module, "load_volume_model", lambda *a, **k: model)
    out = tmp_path / "pred.dcm"
    with pytest.warns(UserWarning, match=r"no code known for class\(es\) \['bright'\]"):
        segment_volume("unused.ckpt", ct_copy, out, progress=False)
    soft, bright = pydicom.dcmread(out).SegmentSequence
    assert soft.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"
    assert bright.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"
    codes = json.loads((tmp_path / "pred.dcm.metrics.json").read_text())["segment_codes"]
    assert codes["soft"]["source"].startswith("training SEG") and "Liver" in codes["soft"]["source"]
    assert codes["bright"]["source"].startswith("generic")


def test_a_class_named_like_an_organ_gets_its_snomed_code():
    from densekit.medical.segment_codes import TISSUE, segment_codes

    codes = segment_codes(["background", "liver", "kidney", "blob"], {}, None)
    assert codes[1].type == ("10200004", "SCT", "Liver")
    assert codes[1].category == ("123037004", "SCT", "Anatomical Structure")
    assert codes[2].type[2] == "Kidney" and codes[3].type == TISSUE


def test_progress_outside_a_terminal_is_plain_lines(capfd, monkeypatch):
    monkeypatch.setenv("DENSEKIT_PROGRESS_SECONDS", "0.000001")
    predict_volume(threshold_model(), box_volume(), batch_size=4, progress=True)
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("densekit volume")]
    assert lines and lines[-1].startswith("densekit volume: axial 20/20 slices (100%)"), lines
