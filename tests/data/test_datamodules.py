"""Data modules and window datasets: pairing, splits, targets, and bad input."""

import numpy as np
import pytest
import torch
from helpers import TEST_DATA
from helpers import write_raster as write

from densekit.data import ChangeDataModule, DepthDataModule, SegmentationDataModule
from densekit.data.datasets import Sample, WindowDataset, reference_grid
from densekit.errors import DensekitError

CHIPS = TEST_DATA / "chips"


def one(image, target):
    """A sample reading the whole 20 x 20 raster."""
    grid, _ = reference_grid(str(image))
    return Sample((str(image),), str(target), (0, 0, 20, 20), (0, 0, 20, 20), grid)


def test_folders_pair_by_name_and_items_have_the_right_types():
    dm = SegmentationDataModule(
        images=str(CHIPS / "seg/images"), labels=str(CHIPS / "seg/labels"), batch_size=2
    )
    dm.setup("fit")
    item = dm.datasets["train"][0]
    assert item["image"].shape == (3, 60, 60) and item["image"].dtype == torch.float32
    assert item["mask"].dtype == torch.int64 and set(item["mask"].unique().tolist()) <= {
        0,
        1,
        2,
        255,
    }
    assert item["path"].endswith("chip00.tif")
    assert dm.val_dataloader() == []  # no validation split given


def test_unpaired_files_are_named(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    write(tmp_path / "img" / "a.tif", np.zeros((3, 20, 20), np.uint8))
    write(tmp_path / "img" / "b.tif", np.zeros((3, 20, 20), np.uint8))
    write(tmp_path / "lab" / "a.tif", np.zeros((20, 20), np.uint8))
    write(tmp_path / "lab" / "c.tif", np.zeros((20, 20), np.uint8))
    dm = SegmentationDataModule(images=str(tmp_path / "img"), labels=str(tmp_path / "lab"))
    with pytest.raises(DensekitError, match=r"do not pair up by file name; unpaired: .*'b'.*'c'"):
        dm.setup("fit")
    dm = SegmentationDataModule(
        images=[str(tmp_path / "img" / "a.tif")],
        labels=[str(tmp_path / "lab" / "a.tif"), str(tmp_path / "lab" / "c.tif")],
    )
    with pytest.raises(DensekitError, match=r"do not pair up: \{'images': 1, 'labels': 2\}"):
        dm.setup("fit")


def test_empty_folder_and_missing_files(tmp_path):
    with pytest.raises(DensekitError, match=r"holds no raster files"):
        SegmentationDataModule(images=str(tmp_path), labels=str(tmp_path)).setup("fit")
    with pytest.raises(DensekitError, match=r"no such file"):
        SegmentationDataModule(
            images=[str(tmp_path / "x.tif")], labels=[str(tmp_path / "y.tif")]
        ).setup("fit")


def test_column_split_keeps_splits_apart():
    img = str(CHIPS / "seg/images/chip00.tif")
    lab = str(CHIPS / "seg/labels/chip00.tif")
    dm = SegmentationDataModule(images=[img], labels=[lab], split=[0.5, 0.25, 0.25], window=16)
    dm.setup("fit")
    seen = {}
    for name in ("train", "val", "test"):
        cols = set()
        for item, s in zip(dm.datasets[name], dm.datasets[name].samples, strict=True):
            valid = item["mask"] != 255
            c0 = s.window[0]
            cols |= {c0 + int(c) for c in torch.nonzero(valid.any(0)).flatten()}
        seen[name] = cols
    assert max(seen["train"]) < 30 <= min(seen["val"]) and max(seen["val"]) < 45 <= min(
        seen["test"]
    )


def test_label_map_and_unknown_values(tmp_path):
    write(tmp_path / "i.tif", np.zeros((3, 20, 20), np.uint8))
    lab = np.zeros((20, 20), np.uint8)
    lab[5:10, 5:10] = 255
    write(tmp_path / "l.tif", lab)
    ds = WindowDataset(
        [one(tmp_path / "i.tif", tmp_path / "l.tif")],
        "segmentation",
        label_map={0: 0, 255: 1},
    )
    assert int(ds[0]["mask"].sum()) == 25
    lab[0, 0] = 128
    write(tmp_path / "l2.tif", lab)  # a dataset keeps its files open: a new file, a new dataset
    ds = WindowDataset(
        [one(tmp_path / "i.tif", tmp_path / "l2.tif")],
        "segmentation",
        label_map={0: 0, 255: 1},
    )
    with pytest.raises(
        DensekitError, match=r"l2.tif: label value\(s\) \[128\] are not in label_map"
    ):
        ds[0]


def test_label_values_outside_the_classes_name_the_value_and_file():
    from densekit.tasks.segmentation import check_labels

    dm = SegmentationDataModule(
        images=str(CHIPS / "seg/images"), labels=str(CHIPS / "seg/labels"), batch_size=4
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    with pytest.raises(
        DensekitError, match=r"chip\d\d.tif: label value 2 is outside the classes 0..1"
    ):
        check_labels(batch["mask"], 2, 255, batch["path"])


def test_invalid_depth_is_masked(tmp_path):
    dm = DepthDataModule(images=str(CHIPS / "depth/images"), depths=str(CHIPS / "depth/depths"))
    dm.setup("fit")
    depth = dm.datasets["train"][0]["depth"]
    assert torch.isnan(depth[0, -6:, -6:]).all()  # NaN in the file
    assert torch.isnan(depth[0, :4, -6:]).all()  # 0 in the file
    assert torch.isfinite(depth[0, :50, :50]).all()
    target = np.full((1, 20, 20), 2.0, np.float32)
    target[0, 0, :5] = -1.0
    write(tmp_path / "d.tif", target)
    write(tmp_path / "i.tif", np.zeros((3, 20, 20), np.uint8))
    ds = WindowDataset(
        [one(tmp_path / "i.tif", tmp_path / "d.tif")],
        "depth",
    )
    assert int(torch.isnan(ds[0]["depth"]).sum()) == 5  # negative depth is invalid


def test_nodata_pixels_of_the_image_are_ignored(tmp_path):
    img = np.full((3, 20, 20), 7, np.uint16)
    img[:, :3, :] = 0
    write(tmp_path / "i.tif", img, nodata=0)
    write(tmp_path / "l.tif", np.ones((20, 20), np.uint8))
    ds = WindowDataset(
        [one(tmp_path / "i.tif", tmp_path / "l.tif")],
        "segmentation",
    )
    mask = ds[0]["mask"]
    assert (mask[:3] == 255).all() and (mask[3:] == 1).all()


def test_change_pairs_of_different_sizes(tmp_path):
    write(tmp_path / "a.tif", np.zeros((3, 20, 20), np.uint8))
    write(tmp_path / "b.tif", np.zeros((3, 20, 22), np.uint8))
    write(tmp_path / "l.tif", np.zeros((20, 20), np.uint8))
    dm = ChangeDataModule(
        images1=[str(tmp_path / "a.tif")],
        images2=[str(tmp_path / "b.tif")],
        labels=[str(tmp_path / "l.tif")],
    )
    with pytest.raises(
        DensekitError,
        match=r"b.tif has no CRS and the grids differ.*22x20 px, no CRS; .*a.tif: 20x20 px",
    ):
        dm.setup("fit")


def test_split_and_separate_files_are_exclusive():
    with pytest.raises(DensekitError, match=r"either split fractions or separate val/test files"):
        SegmentationDataModule(
            images="a", labels="b", val_images="c", val_labels="d", split=[0.5, 0.5]
        )
    with pytest.raises(DensekitError, match=r"val_labels missing"):
        SegmentationDataModule(images="a", labels="b", val_images="c")


def test_nodata_of_the_target_is_ignored(tmp_path):
    write(tmp_path / "i.tif", np.full((3, 20, 20), 5, np.uint8))
    lab = np.ones((20, 20), np.uint8)
    lab[:4] = 9
    write(tmp_path / "l.tif", lab, nodata=9)
    ds = WindowDataset(
        [one(tmp_path / "i.tif", tmp_path / "l.tif")],
        "segmentation",
    )
    mask = ds[0]["mask"]
    assert (mask[:4] == 255).all() and (mask[4:] == 1).all()
    depth = np.full((20, 20), 2.0, np.float32)
    depth[:, :3] = 3.4e38
    write(tmp_path / "d.tif", depth, nodata=3.4e38)
    ds = WindowDataset(
        [one(tmp_path / "i.tif", tmp_path / "d.tif")],
        "depth",
    )
    assert (
        torch.isnan(ds[0]["depth"][0, :, :3]).all()
        and torch.isfinite(ds[0]["depth"][0, :, 3:]).all()
    )


def test_label_map_without_zero_on_edge_windows(tmp_path):
    write(tmp_path / "i.tif", np.zeros((3, 30, 30), np.uint8))
    write(tmp_path / "l.tif", np.full((30, 30), 2, np.uint8))
    dm = SegmentationDataModule(
        images=[str(tmp_path / "i.tif")],
        labels=[str(tmp_path / "l.tif")],
        window=28,
        label_map={1: 0, 2: 1},
    )
    dm.setup("fit")
    masks = [item["mask"] for item in dm.datasets["train"]]
    assert len(masks) == 4
    assert all(set(m.unique().tolist()) <= {1, 255} for m in masks)
    assert (masks[-1][2:, 2:] == 255).all()  # outside the raster


def test_nan_in_imagery_is_an_error_unless_it_is_nodata(tmp_path):
    img = np.ones((3, 20, 20), np.float32)
    img[1, 5, 5] = np.nan
    write(tmp_path / "i.tif", img)
    write(tmp_path / "l.tif", np.ones((20, 20), np.uint8))
    ds = WindowDataset([one(tmp_path / "i.tif", tmp_path / "l.tif")], "segmentation")
    with pytest.raises(DensekitError, match=r"i.tif: NaN or infinite pixel values .*nodata"):
        ds[0]
    write(tmp_path / "n.tif", img, nodata=float("nan"))
    ds = WindowDataset([one(tmp_path / "n.tif", tmp_path / "l.tif")], "segmentation")
    item = ds[0]
    assert torch.isnan(item["image"][:, 5, 5]).all() and item["mask"][5, 5] == 255
    assert torch.isfinite(item["image"][:, 6, 6]).all()


def test_corrupt_raster_in_a_data_module(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"II*\x00 not a tiff")
    write(tmp_path / "l.tif", np.ones((20, 20), np.uint8))
    dm = SegmentationDataModule(
        images=[str(tmp_path / "bad.tif")], labels=[str(tmp_path / "l.tif")]
    )
    with pytest.raises(DensekitError, match=r"bad.tif: not a readable raster"):
        dm.setup("fit")


def test_nodata_value_given_by_the_user(tmp_path):
    img = np.full((3, 20, 20), 10, np.int16)
    img[:, :2] = -9999  # no nodata tag in the file
    write(tmp_path / "i.tif", img)
    write(tmp_path / "l.tif", np.ones((20, 20), np.uint8))
    dm = SegmentationDataModule(images=[str(tmp_path / "i.tif")], labels=[str(tmp_path / "l.tif")])
    dm.setup("fit")
    assert (dm.datasets["train"][0]["mask"] == 1).all()
    dm = SegmentationDataModule(
        images=[str(tmp_path / "i.tif")], labels=[str(tmp_path / "l.tif")], nodata=-9999
    )
    dm.setup("fit")
    item = dm.datasets["train"][0]
    assert (item["mask"][:2] == 255).all() and (item["mask"][2:] == 1).all()
    assert torch.isnan(item["image"][:, :2]).all()


def test_target_nodata_given_by_the_user(tmp_path):
    write(tmp_path / "i.tif", np.full((3, 20, 20), 10, np.uint8))
    lab = np.ones((20, 20), np.uint8)
    lab[:3] = 200  # a fill the file does not tag
    write(tmp_path / "l.tif", lab)
    dm = SegmentationDataModule(
        images=[str(tmp_path / "i.tif")],
        labels=[str(tmp_path / "l.tif")],
        label_map={1: 1},
        target_nodata=200,
    )
    dm.setup("fit")
    mask = dm.datasets["train"][0]["mask"]
    assert (mask[:3] == 255).all() and (mask[3:] == 1).all()


def test_two_split_fractions_go_with_separate_test_files():
    dm = SegmentationDataModule(
        images=str(CHIPS / "seg/images"),
        labels=str(CHIPS / "seg/labels"),
        test_images=str(CHIPS / "seg/images_val"),
        test_labels=str(CHIPS / "seg/labels_val"),
        split=[0.75, 0.25],
        window=15,
    )
    dm.setup("fit")
    assert {s.images[0].rsplit("/", 1)[1] for s in dm.datasets["test"].samples} == {
        "chip08.tif",
        "chip09.tif",
        "chip10.tif",
        "chip11.tif",
    }
    assert max(s.window[0] for s in dm.datasets["train"].samples) < 45
    assert min(s.window[0] for s in dm.datasets["val"].samples) >= 45
    with pytest.raises(DensekitError, match="two fractions, train and val, may go with"):
        SegmentationDataModule(
            images=str(CHIPS / "seg/images"),
            labels=str(CHIPS / "seg/labels"),
            test_images=str(CHIPS / "seg/images_val"),
            test_labels=str(CHIPS / "seg/labels_val"),
            split=[0.5, 0.25, 0.25],
        )


def test_teardown_closes_the_open_readers():
    dm = SegmentationDataModule(
        images=str(CHIPS / "seg/images"), labels=str(CHIPS / "seg/labels"), window=30
    )
    dm.setup("fit")
    dataset = dm.datasets["train"]
    dataset[0]
    readers = dataset._readers
    assert readers._open  # files stay open between windows
    dm.teardown("fit")
    assert not readers._open  # closed here, not by the garbage collector later
    assert dataset[1]["image"].shape == (3, 30, 30)  # and reopened when read again
