"""Medical data modules: slices of volumes with their masks (splits by patient, never by slice;
2.5D items as slice_input; masks aligned by geometry; PHI-free item names), 2D PNG/JPEG sets,
the configs in configs/medical trained through `densekit fit`, and bad input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import yaml
from helpers import REPO, TINY_CLI, needs_shared_data
from PIL import Image
from pydicom.uid import generate_uid

from densekit.cli import main
from densekit.data.augment import Augmentation
from densekit.data.nifti import write_nifti
from densekit.errors import DensekitError
from densekit.medical import (
    Medical2DDataModule,
    MedicalSegmentationDataModule,
    Volume,
    pseudonym,
    read_rtstruct,
    read_volume,
)
from densekit.medical.slices import Intensity, display_order, plane_axis, slice_input

DCMQI = "dicom-seg-ct-dcmqi"
# level 2, width 4: labels 0..4 -> image 0..1, so image * 4 == label where aligned
EQUAL = {"ct_window": [2.0, 4.0]}


def affine(spacing=(2.0, 1.0, 1.5), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.array([[0, 0, spacing[0]], [0, spacing[1], 0], [spacing[2], 0, 0]]).T
    a[:3, 3] = origin
    return a  # slice steps along S, rows along P, columns along L: axial slices


def labels_volume(shape=(5, 6, 7), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=shape).astype(np.uint8)
    labels[0] = 0  # one slice without foreground
    return labels


def write_case(folder: Path, name: str, labels: np.ndarray, mask_affine=None) -> dict[str, str]:
    """An image whose value is its label (image * 4 == label) and the label map as NIfTIs."""
    folder.mkdir(parents=True, exist_ok=True)
    a = affine()
    image = write_nifti(Volume(labels.astype(np.float32), a), folder / f"{name}_ct.nii.gz")
    mask = Volume(labels, a)
    if mask_affine is not None:
        mask = Volume(*mask_affine(labels, a))
    return {"image": str(image), "mask": str(write_nifti(mask, folder / f"{name}_seg.nii.gz"))}


def patients(tmp_path: Path, n: int = 6) -> list[dict[str, str]]:
    cases = []
    for p in range(n):
        for visit in range(2):  # two cases of each patient
            case = write_case(tmp_path, f"p{p}v{visit}", labels_volume(seed=10 * p + visit))
            cases.append({**case, "patient": f"P{p:02d}"})
    return cases


def module(cases, **kw) -> MedicalSegmentationDataModule:
    dm = MedicalSegmentationDataModule(intensity=kw.pop("intensity", EQUAL), cases=cases, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("fit")
    return dm


def cases_of(dm, split: str) -> set[str]:
    ds = dm.datasets[split]
    return {ds.cases[c].group for c, _ in ds.slices}


def test_patient_split_never_shares_a_patient_and_is_reproducible(tmp_path):
    cases = patients(tmp_path)
    dm = module(cases, split=[0.5, 0.25, 0.25], split_seed=3)
    groups = [cases_of(dm, s) for s in ("train", "val", "test")]
    assert [len(g) for g in groups] == [3, 1, 2]  # edges round(6 * 0.5), round(6 * 0.75)
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    again = module(cases, split=[0.5, 0.25, 0.25], split_seed=3)
    assert [cases_of(again, s) for s in ("train", "val", "test")] == groups
    others = [
        cases_of(module(cases, split=[0.5, 0.25, 0.25], split_seed=s), "val") for s in range(4)
    ]
    assert any(o != groups[1] for o in others)
    # both visits of a patient go together, and the names carry no file or patient name
    ds = dm.datasets["train"]
    names = {ds.cases[c].name for c, _ in ds.slices}
    assert len(names) == 2 * len(groups[0])
    assert all("P0" not in n and "p0" not in n and ".nii" not in n for n in names)


def test_explicit_lists_sharing_a_patient_are_refused(tmp_path):
    cases = patients(tmp_path, n=2)
    with pytest.raises(
        DensekitError, match=r"cases\[2\] \(train\) and val_cases\[0\] \(val\) are"
    ) as err:
        module(cases[2:] + cases[:1], val_cases=[cases[1]])
    for p in ("P00", "P01"):  # not even the hash of the patient (12 hex: brute-forceable)
        assert p not in str(err.value) and pseudonym(p) not in str(err.value)
    dm = module(cases[:2], val_cases=cases[2:])  # other patient: fine
    assert cases_of(dm, "train").isdisjoint(cases_of(dm, "val"))


def test_one_patient_needs_split_by_slice(tmp_path):
    case = write_case(tmp_path, "only", labels_volume(shape=(10, 4, 4)))
    with pytest.raises(DensekitError, match="all cases are of one patient, so a patient split is"):
        module([case], split=[0.6, 0.2, 0.2])
    with pytest.warns(UserWarning, match="slices of one patient are in several splits"):
        dm = MedicalSegmentationDataModule(
            intensity=EQUAL, cases=[case], split=[0.6, 0.2, 0.2], split_by="slice"
        )
        dm.setup("fit")
    blocks = {s: [k for _, k in dm.datasets[s].slices] for s in ("train", "val", "test")}
    # contiguous blocks; slice 0 (background only) is labelled, so it is kept
    assert blocks == {"train": [0, 1, 2, 3, 4, 5], "val": [6, 7], "test": [8, 9]}


def test_items_are_slice_inputs_and_masks_aligned_by_geometry(tmp_path):
    labels = labels_volume()

    def flipped(array, a):  # the label map stored with its rows and slices reversed
        b = a.copy()
        for axis in (0, 1):
            b[:3, 3] += (array.shape[axis] - 1) * a[:3, axis]
            b[:3, axis] *= -1
        return np.ascontiguousarray(array[::-1, ::-1]), b

    case = write_case(tmp_path, "c", labels, mask_affine=flipped)
    scaled = Intensity(ct_window=(2.0, 4.0)).apply(labels.astype(np.float32))
    for plane in ("axial", "coronal", "sagittal"):
        image = display_order(Volume(labels, affine()), plane).apply(scaled)
        for context in (0, 2):
            dm = module([case], plane=plane, context=context)
            ds = dm.datasets["train"]
            axis = plane_axis(Volume(labels, affine()), plane)
            assert len(ds) == labels.shape[axis]
            for i in range(len(ds)):
                item, (_, k) = ds[i], ds.slices[i]
                expected = slice_input(image, 0, k, context)
                assert item["image"].dtype == torch.float32 and item["mask"].dtype == torch.int64
                assert torch.equal(item["image"], torch.from_numpy(expected))
                assert torch.equal((item["image"][1] * 4).round().long(), item["mask"])
                assert item["path"].endswith(f"{plane} slice {k}")


def test_dicom_and_canonical_nifti_storage_give_the_same_items(tmp_path):
    """The LPS-ordered volume and its RAS as_closest_canonical NIfTI (columns and rows stored
    reversed) reach the model in one display orientation, image and mask alike."""
    import nibabel as nib

    labels = labels_volume()
    case = write_case(tmp_path, "lps", labels)
    for key in ("image", "mask"):
        nib.save(nib.as_closest_canonical(nib.load(case[key])), tmp_path / f"ras_{key}.nii.gz")
    ras = {"image": str(tmp_path / "ras_image.nii.gz"), "mask": str(tmp_path / "ras_mask.nii.gz")}
    assert np.array_equal(read_volume(ras["mask"]).array, labels[:, ::-1, ::-1])
    for plane in ("axial", "coronal", "sagittal"):
        a = module([case], plane=plane, context=1).datasets["train"]
        b = module([ras], plane=plane, context=1).datasets["train"]
        assert len(a) == len(b) > 0
        for i in range(len(a)):
            assert torch.equal(a[i]["image"], b[i]["image"]), plane
            assert torch.equal(a[i]["mask"], b[i]["mask"]), plane


def test_label_map_unlisted_ignore_and_empty_slices(tmp_path):
    labels = labels_volume(shape=(6, 4, 4))
    labels[3] = 0
    case = write_case(tmp_path, "c", labels)
    dm = module([case], label_map={2: 1}, unlisted="ignore")
    masks = [dm.datasets["train"][i]["mask"] for i in range(len(dm.datasets["train"]))]
    assert all(set(m.unique().tolist()) <= {0, 1, 255} for m in masks)
    assert len(masks) == 6  # the empty slices 0 and 3 are labelled background
    dm = module([case], label_map={2: 1, 1: 1}, empty_fraction=0.0)
    assert [k for _, k in dm.datasets["train"].slices] == [1, 2, 4, 5]
    dm = module([case], label_map={0: 255, 1: 1, 2: 1})
    assert [k for _, k in dm.datasets["train"].slices] == [1, 2, 4, 5]  # no labelled pixel
    with pytest.raises(
        DensekitError, match=r"label_map: \[7\] in no mask; the masks hold \[0, 1, 2\]"
    ):
        module([case], label_map={7: 1})


def test_label_subsets_augment_and_padded_batches(tmp_path):
    small = write_case(tmp_path, "a", labels_volume(shape=(4, 5, 6)))
    large = write_case(tmp_path, "b", labels_volume(shape=(4, 7, 9), seed=1))
    dm = module(
        [small, large], label_count=3, subset_seed=1, batch_size=8, augment=Augmentation(hflip=1.0)
    )
    assert len(dm.datasets["train"]) == 3 and dm.train_subset == {"labelled": 8, "kept": 3}
    assert "cache_keys" not in dm.datasets["train"][0]  # augmented: computed, never cached
    dm = module([small, large], batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 7, 9) and batch["mask"].shape == (8, 7, 9)
    padded = [i for i in range(8) if (batch["mask"][i, 5:] == 255).all()]
    assert len(padded) == 4 and (batch["image"][padded][:, :, 5:] == 0).all()
    assert len(batch["cache_keys"]) == 1 and len(set(batch["cache_keys"][0])) == 8
    with pytest.raises(DensekitError, match="densekit volume"):
        dm.predict_dataloader()


def test_samples_per_epoch_sets_the_training_budget(tmp_path):
    case = write_case(tmp_path, "a", labels_volume(shape=(4, 5, 6)))
    dm = module([case], label_count=2, samples_per_epoch=7, batch_size=7)
    batches = list(dm.train_dataloader())
    assert len(batches) == 1 and len(batches[0]["path"]) == 7  # 2 slices, repeated to 7
    assert len(set(batches[0]["path"])) == 2


def test_hyperparameters_are_the_slice_and_class_settings_only(tmp_path):
    dm = MedicalSegmentationDataModule(
        intensity={"percentiles": [1, 99]},
        cases=patients(tmp_path, 1)[:1],
        context=1,
        label_map={2: 1},
        unlisted="ignore",
    )
    assert dict(dm.hparams) == {
        "plane": "axial",
        "context": 1,
        "intensity": {"percentiles": [1, 99]},
        "segments": None,
        "label_map": {2: 1},
        "priority": None,
        "unlisted": "ignore",
    }


def test_cases_of_two_series_in_one_folder_have_their_own_cache_keys(tmp_path):
    src = needs_shared_data(DCMQI, "ct-3slice")
    folder = tmp_path / "ct"
    folder.mkdir()
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.save_as(folder / f"a{f.name}")
        ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3.999", generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"b{f.name}")
    first = read_volume(folder, series_uid=pydicom.dcmread(f).SeriesInstanceUID)
    labels = np.zeros(first.shape, np.uint8)
    labels[:, 100:200, 100:200] = 1
    mask = str(write_nifti(Volume(labels, first.affine), tmp_path / "m.nii.gz"))
    cases = [
        {"image": str(folder), "series_uid": uid, "mask": mask, "patient": "P"}
        for uid in (first.series_uid, "1.2.3.999")
    ]
    dm = module(cases, intensity={"ct_window": "soft_tissue"})
    keys = {c.name: c.cache_key for c in dm.cases}
    assert len(keys) == 2 and len(set(keys.values())) == 2, keys


def test_on_missing_case_key_reaches_the_reader(tmp_path, monkeypatch):
    import densekit.medical.data as data_module

    case = write_case(tmp_path, "c", labels_volume())
    with pytest.raises(DensekitError, match=r"cases\[0\]\.image: .*on_missing='resample' applies"):
        module([{**case, "on_missing": "resample"}])
    seen = []

    def reader(path, series_uid=None, on_missing="error"):
        seen.append(on_missing)
        return read_volume(path)

    monkeypatch.setattr(data_module, "read_volume", reader)
    module([{**case, "on_missing": "resample"}])
    assert seen == ["resample"]


def test_bad_input_names_file_key_and_value(tmp_path):
    case = write_case(tmp_path, "c", labels_volume())
    missing = {**case, "image": str(tmp_path / "absent.nii.gz")}
    with pytest.raises(DensekitError, match=r"cases\[0\]\.image: no such file .*absent\.nii\.gz"):
        module([missing])
    with pytest.raises(DensekitError, match=r"cases\[0\]\.mask: no such file: .*gone\.dcm"):
        module([{**case, "mask": str(tmp_path / "gone.dcm")}])
    other = write_case(tmp_path, "o", labels_volume(shape=(5, 6, 8)))
    with pytest.raises(DensekitError, match=r"o_seg\.nii\.gz .* is not on the grid of .*c_ct\.nii"):
        module([{**case, "mask": other["mask"]}])
    with pytest.raises(
        DensekitError, match=r"unknown key.*'seg'.*image, mask, series_uid, patient, on_missing"
    ):
        module([{"image": case["image"], "seg": case["mask"]}])
    with pytest.raises(DensekitError, match="plane 'transverse' is not one of"):
        module([case], plane="transverse")
    with pytest.raises(DensekitError, match="intensity: unknown key"):
        module([case], intensity={"window": "lung"})
    with pytest.raises(DensekitError, match=r"segments .* is given, but no mask is a SEG"):
        module([case], segments={"Liver": 1})
    text = tmp_path / "notes.txt"
    text.write_text("not dicom")
    with pytest.raises(DensekitError, match="neither a NIfTI/NRRD label map"):
        module([{**case, "mask": str(text)}])


def test_dcmqi_seg_segments_overlaps_and_agreement_with_its_nrrd():
    folder = needs_shared_data(DCMQI)
    ct = str(folder / "ct-3slice")
    seg = module([{"image": ct, "mask": str(folder / "liver.dcm")}], segments={"Liver": 1})
    nrrd = module([{"image": ct, "mask": str(folder / "nrrd_labelmaps" / "liver_seg.nrrd")}])
    a, b = seg.datasets["train"], nrrd.datasets["train"]
    assert len(a) == len(b) == 3
    assert all(
        torch.equal(a[i]["mask"], b[i]["mask"]) and a[i]["mask"].sum() > 30000 for i in range(3)
    )
    assert "(series " in a[0]["path"] and "ct-3slice" not in a[0]["path"]
    with pytest.raises(
        DensekitError, match=r"segments: \['Livr'\] in no mask; the masks hold \['Liver'\]"
    ):
        module([{"image": ct, "mask": str(folder / "liver.dcm")}], segments={"Livr": 1})
    overlaps = {"image": ct, "mask": str(folder / "partial_overlaps.dcm")}
    with pytest.raises(DensekitError, match=r"'GREEN' .* and 'ORANGE' .* overlap in 3017 voxels"):
        module([overlaps], segments={"GREEN": 1, "ORANGE": 2})
    first = module([overlaps], segments={"GREEN": 1, "ORANGE": 2}, priority=["ORANGE", "GREEN"])
    joint = module([overlaps], segments={"GREEN": 1, "ORANGE": 1})
    for i in range(len(first.datasets["train"])):
        m, j = first.datasets["train"][i]["mask"], joint.datasets["train"][i]["mask"]
        assert torch.equal(m > 0, j > 0)  # same voxels; where both, ORANGE (2) wins
    with pytest.raises(DensekitError, match=r"is a SEG with segments \['Liver'\]: give segments"):
        module([{"image": ct, "mask": str(folder / "liver.dcm")}])


def test_rtstruct_rois_through_the_data_module():
    folder = needs_shared_data("dicom-rtstruct-ct-rtutils")
    case = {
        "image": str(folder),
        "mask": str(folder / "rt.dcm"),
    }  # the RTSTRUCT is skipped as image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = read_volume(folder)
        rois, names = read_rtstruct(folder / "rt.dcm", image)
    dm = module([case], segments={"ROI-1": 1})
    ds = dm.datasets["train"]
    assert names == ["ROI-1"] and len(ds) == 2
    for i in range(2):
        assert torch.equal(
            ds[i]["mask"], torch.from_numpy(rois[0, ds.slices[i][1]].astype(np.int64))
        )
    assert sum(int(ds[i]["mask"].sum()) for i in range(2)) > 0


def write_pngs(folder: Path, sizes: list[tuple[int, int]]) -> tuple[Path, Path]:
    (folder / "img").mkdir(parents=True)
    (folder / "msk").mkdir()
    for n, (h, w) in enumerate(sizes):
        mask = np.zeros((h, w), np.uint8)
        mask[: h // 2] = 255
        image = np.stack([mask // 2 + 10] * 3, axis=-1)
        Image.fromarray(image).save(folder / "img" / f"f{n}.png")
        Image.fromarray(mask).save(folder / "msk" / f"f{n}.png")
    return folder / "img", folder / "msk"


def test_2d_pngs_label_map_padding_resize_and_errors(tmp_path):
    images, masks = write_pngs(tmp_path, [(6, 8), (10, 12), (6, 8), (6, 8)])
    dm = Medical2DDataModule(str(images), str(masks), label_map={0: 0, 255: 1}, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 10, 12) and batch["image"].max() <= 1
    assert set(batch["mask"].unique().tolist()) == {0, 1, 255}  # padding is unlabelled
    dm = Medical2DDataModule(
        str(images), str(masks), label_map={0: 0, 255: 1}, size=16, split=[0.5, 0.25, 0.25]
    )
    dm.setup("fit")
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    item = dm.datasets["val"][0]
    assert item["image"].shape == (3, 16, 16) and (item["mask"][:8] == 1).all()
    with pytest.raises(DensekitError, match=r"label value\(s\) \[255\] are not in label_map"):
        Medical2DDataModule(str(images), str(masks), label_map={0: 0}).setup("fit")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(masks / "f1.png")
    with pytest.raises(DensekitError, match=r"f1\.png is 5x5 pixels but .*f1\.png is 12x10"):
        Medical2DDataModule(str(images), str(masks)).setup("fit")


def test_kvasir_jpeg_masks_need_a_threshold():
    folder = needs_shared_data("medical-2d-seg-samples", "kvasir-seg")
    dm = Medical2DDataModule(str(folder / "images"), str(folder / "masks"), size=[64, 64])
    with pytest.raises(DensekitError, match="a JPEG mask is lossy"):
        dm.setup("fit")


CONFIGS = sorted((REPO / "configs" / "medical").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_medical_config_trains_with_fast_dev_run(config, tmp_path):
    needs_shared_data()
    argv = [
        "fit",
        "--config",
        str(config),
        *TINY_CLI,
        "--trainer.fast_dev_run",
        "true",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0


def test_checkpoint_carries_the_slice_settings(tmp_path):
    cases = [
        {
            **write_case(tmp_path / "data", f"p{p}v{v}", labels_volume((14, 14, 14), p + v)),
            "patient": f"P{p}",
        }
        for p in range(2)
        for v in range(2)
    ]  # slices of at least one patch
    config = {
        "model": {
            "class_path": "densekit.tasks.SegmentationTask",
            "init_args": {"num_classes": 3, "backbone": "dinov2_vits14", "scale": 1.0},
        },
        "data": {
            "class_path": "densekit.medical.MedicalSegmentationDataModule",
            "init_args": {
                "cases": cases[:2],
                "val_cases": cases[2:],
                "context": 1,
                "plane": "coronal",
                "intensity": {"ct_window": "soft_tissue"},
                "label_map": {1: 1, 2: 2},
                "batch_size": 16,
            },
        },
    }
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [
        "fit",
        "--config",
        str(path),
        *TINY_CLI[:4],
        "--trainer.max_steps",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    (ckpt,) = tmp_path.rglob("*.ckpt")
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    hp = dict(saved["datamodule_hyper_parameters"])
    # the YAML keys of label_map may come back as text; densekit volume reads them as numbers
    assert {int(k): v for k, v in hp.pop("label_map").items()} == {1: 1, 2: 2}
    assert hp == {
        "plane": "coronal",
        "context": 1,
        "intensity": {"ct_window": "soft_tissue"},
        "segments": None,
        "priority": None,
        "unlisted": "background",
    }
    assert "p0" not in str(saved["datamodule_hyper_parameters"])
