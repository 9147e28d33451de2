"""The weak cases of the attack list, no longer silent: NaN voxels in a NIfTI, 0/255 masks
without ``label_map``, and a checkpoint whose backbone weights file is gone."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from helpers import REPO, TEST_DATA
from PIL import Image
from robust_cases import generate, one_line

from densekit.data import SegmentationDataModule
from densekit.data.nifti import read_volume
from densekit.errors import DensekitError, InputImageError
from densekit.medical.data import MedicalSegmentationDataModule
from densekit.medical.data2d import Medical2DDataModule

SAMPLES = REPO / "densekit" / "samples"
LEGACY = TEST_DATA / "checkpoints_v0"


# -- NaN voxels --------------------------------------------------------------------------------
def nan_volume(path: Path, count: int = 5) -> Path:
    data = np.linspace(-200, 300, 16 * 16 * 4, dtype=np.float32).reshape(16, 16, 4)
    data.reshape(-1)[7 : 7 + count] = np.nan
    data[0, 0, 3] = np.inf
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])), path)
    return path


def test_nan_voxels_of_a_nifti_are_refused_with_file_and_count(tmp_path):
    path = nan_volume(tmp_path / "ct.nii.gz")
    with pytest.raises(InputImageError) as err:
        read_volume(path)
    message = str(err.value)
    assert message.startswith(f"{path}: 6 of 1024 voxels are not finite (5 NaN, 1 infinite")
    assert "does not label them" in message


def test_volume_on_nan_voxels_writes_nothing(tmp_path, capsys, threshold):
    path = nan_volume(tmp_path / "ct.nii.gz")
    out = tmp_path / "seg.nii.gz"
    code, line = one_line(
        capsys,
        ["volume", "--checkpoint", "unused.ckpt", "--input", str(path), "--output", str(out),
         "--no-progress"],
    )  # fmt: skip
    assert code == 2 and f"{path}: 6 of 1024 voxels are not finite" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def medical_data(cases: list[dict[str, str]]) -> MedicalSegmentationDataModule:
    return MedicalSegmentationDataModule(
        {"ct_window": "soft_tissue"}, cases=cases, split=[0.5, 0.5], split_by="slice"
    )


def test_a_medical_data_module_names_the_case_with_nan_voxels(tmp_path):
    image = nan_volume(tmp_path / "ct.nii.gz")
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4), np.uint8), np.diag([0.8, 0.8, 2.5, 1.0])), mask)
    data = medical_data([{"image": str(image), "mask": str(mask)}])
    with pytest.raises(DensekitError, match=r"cases\[0\]\.image: .*ct\.nii\.gz: 6 of 1024 voxels"):
        data.setup("fit")


# -- 0/255 masks without label_map -----------------------------------------------------------
def test_a_real_0_255_building_mask_without_label_map_is_refused():
    """SpaceNet Atlanta's building mask (bundled) is 0/255: without label_map every building
    pixel would be ignore_index."""
    kwargs = {
        "images": str(SAMPLES / "spacenet_atlanta" / "image.tif"),
        "labels": str(SAMPLES / "spacenet_atlanta" / "buildings.tif"),
        "window": 224,
        "split": [0.75, 0.25],
    }
    with pytest.raises(DensekitError) as err:
        SegmentationDataModule(**kwargs).setup("fit")
    message = str(err.value)
    assert "the train split: the masks hold only the values [0, 255]" in message
    assert "give label_map: {0: 0, 255: 1}" in message
    data = SegmentationDataModule(**kwargs, label_map={0: 0, 255: 1})
    data.setup("fit")
    masks = [data.datasets["train"][i]["mask"] for i in range(len(data.datasets["train"]))]
    # buildings are class 1 (255 remains only where edge windows are padded)
    assert {0, 1} <= set(torch.unique(torch.stack(masks)).tolist())


def test_labels_with_a_second_class_keep_255_as_ignore(tmp_path):
    from helpers import write_raster

    image = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    labels = np.zeros((64, 64), np.uint8)
    labels[:20] = 1
    labels[40:] = 255  # unlabelled
    write_raster(tmp_path / "i.tif", image, crs="EPSG:32632")
    write_raster(tmp_path / "l.tif", labels, crs="EPSG:32632")
    data = SegmentationDataModule(
        images=str(tmp_path / "i.tif"), labels=str(tmp_path / "l.tif"), split=[0.5, 0.5]
    )
    data.setup("fit")  # {0, 1, 255}: 255 is ignore_index as documented


def png_pairs(folder: Path, values: tuple[int, int]) -> tuple[str, str]:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            folder / "images" / f"{i}.png"
        )
        mask = np.full((32, 32), values[0], np.uint8)
        mask[8:20, 8:20] = values[1]
        Image.fromarray(mask).save(folder / "masks" / f"{i}.png")
    return str(folder / "images"), str(folder / "masks")


def test_0_255_png_masks_of_2d_medical_data(tmp_path):
    images, masks = png_pairs(tmp_path, (0, 255))
    with pytest.raises(DensekitError, match=r"the train masks: the masks hold only the values"):
        Medical2DDataModule(images=images, masks=masks, split=[0.5, 0.5]).setup("fit")
    Medical2DDataModule(
        images=images, masks=masks, split=[0.5, 0.5], label_map={0: 0, 255: 1}
    ).setup("fit")


def test_0_255_label_maps_of_volumes(tmp_path):
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    image = np.random.default_rng(0).normal(0, 100, (16, 16, 4)).astype(np.float32)
    mask = np.zeros((16, 16, 4), np.uint8)
    mask[4:10, 4:10] = 255
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "mask.nii.gz")
    case = {"image": str(tmp_path / "ct.nii.gz"), "mask": str(tmp_path / "mask.nii.gz")}
    with pytest.raises(DensekitError, match=r"the label maps: the masks hold only the values"):
        medical_data([case]).setup("fit")


# -- a checkpoint naming a backbone weights file that is gone ---------------------------------
def checkpoint_on_missing_weights(tmp_path: Path) -> tuple[Path, Path]:
    """The legacy segmentation checkpoint as if trained on a weights file that was removed."""
    stored = torch.load(LEGACY / "seg_linear.ckpt", map_location="cpu", weights_only=True)
    gone = tmp_path / "weights" / "dinov2_vits14_pretrain.pth"
    stored["hyper_parameters"]["weights"] = str(gone)
    stored["densekit"]["backbone"].update(source="official", path=str(gone), sha256="ab" * 32)
    torch.save(stored, tmp_path / "run.ckpt")
    return tmp_path / "run.ckpt", gone


def test_missing_backbone_weights_are_one_line_for_tile(tmp_path, capsys):
    ckpt, gone = checkpoint_on_missing_weights(tmp_path)
    out = tmp_path / "o.tif"
    code, line = one_line(
        capsys,
        ["tile", "--checkpoint", str(ckpt), "--input", str(LEGACY / "inputs" / "a.tif"),
         "--output", str(out), "--no-progress"],
    )  # fmt: skip
    assert code == 2
    assert line == (
        f"densekit tile: error: checkpoint {ckpt}: its backbone dinov2_vits14 was trained on "
        f"the weights file {gone} (sha256 {'ab' * 32}), which does not exist here; the "
        "checkpoint names that file but does not hold it: put the file back at that path"
    )
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))


def test_missing_backbone_weights_are_one_line_for_test_ckpt_path(tmp_path, capsys):
    ckpt, gone = checkpoint_on_missing_weights(tmp_path)
    doc = generate.config("seg_linear", tmp_path / "run")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, line = one_line(
            capsys, ["test", "--config", str(tmp_path / "config.yaml"), "--ckpt_path", str(ckpt)]
        )
    assert code == 2
    assert line.startswith(f"densekit test: error: checkpoint {ckpt}: its backbone")
    assert f"weights file {gone}" in line and "does not exist here" in line
