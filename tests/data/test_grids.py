"""Rasters are read on the reference grid of their sample: other resolutions, sizes and CRSs are
warped onto it; what cannot be aligned is an error stating both grids."""

import numpy as np
import pytest
import rasterio
import torch
from helpers import needs_shared_data, write_raster
from rasterio.transform import from_origin

from densekit.data import ChangeDataModule, SegmentationDataModule
from densekit.data.datasets import band_table, read_box, reference_grid
from densekit.data.grids import grid_of
from densekit.errors import DensekitError

UTM = "EPSG:32633"


def write(path, data, crs=UTM, **kw):
    write_raster(path, data, crs=crs, **kw)


def test_band_folder_at_several_resolutions(tmp_path):
    folder = tmp_path / "bands"
    folder.mkdir()
    ten = np.arange(40 * 40, dtype=np.uint16).reshape(40, 40)
    write(folder / "T_B04.tif", ten)
    write(
        folder / "T_B8A.tif",
        np.full((20, 20), 7, np.uint16),
        transform=from_origin(500000, 4600000, 20, 20),
    )
    write(
        folder / "T_B01.tif",
        np.full((7, 7), 3, np.uint16),
        transform=from_origin(500000, 4600000, 60, 60),
    )
    assert [n for _, _, n in band_table(str(folder))] == ["B01", "B04", "B8A"]
    grid, ref = reference_grid(str(folder))
    assert ref.endswith("T_B04.tif") and (grid.width, grid.height) == (40, 40)
    values, inside, invalid = read_box(
        str(folder), (0, 0, 40, 40), (0, 0, 40, 40), ["B04", "B8A", "B01"], grid
    )
    np.testing.assert_array_equal(values[0], ten)
    assert (values[1] == 7).all()
    assert (values[2] == 3).all() and not invalid.any()  # 7 x 60 m covers 40 x 10 m
    assert inside.all()


def test_second_date_a_few_pixels_smaller_is_aligned(tmp_path):
    write(tmp_path / "a.tif", np.ones((3, 30, 30), np.uint8))
    write(tmp_path / "b.tif", np.full((3, 28, 28), 2, np.uint8))
    write(tmp_path / "l.tif", np.zeros((30, 30), np.uint8))
    dm = ChangeDataModule(
        images1=[str(tmp_path / "a.tif")],
        images2=[str(tmp_path / "b.tif")],
        labels=[str(tmp_path / "l.tif")],
    )
    dm.setup("fit")
    item = dm.datasets["train"][0]
    assert item["image2"].shape == (3, 30, 30)
    assert (item["mask"][:28, :28] == 0).all() and (item["mask"][28:, :] == 255).all()


def test_label_without_crs_on_the_same_pixel_grid(tmp_path):
    write(tmp_path / "i.tif", np.ones((3, 20, 20), np.uint8))
    with rasterio.open(
        tmp_path / "l.tif", "w", driver="GTiff", height=20, width=20, count=1, dtype="uint8"
    ) as dst:
        dst.write(np.ones((1, 20, 20), np.uint8))
    dm = SegmentationDataModule(images=[str(tmp_path / "i.tif")], labels=[str(tmp_path / "l.tif")])
    dm.setup("fit")
    assert (dm.datasets["train"][0]["mask"] == 1).all()
    with rasterio.open(
        tmp_path / "l2.tif", "w", driver="GTiff", height=10, width=10, count=1, dtype="uint8"
    ) as dst:
        dst.write(np.ones((1, 10, 10), np.uint8))
    dm = SegmentationDataModule(images=[str(tmp_path / "i.tif")], labels=[str(tmp_path / "l2.tif")])
    with pytest.raises(
        DensekitError, match=r"l2.tif has no CRS and the grids differ.*10x10 px, no CRS"
    ):
        dm.setup("fit")


def test_label_in_another_crs_is_reprojected(tmp_path):
    write(tmp_path / "i.tif", np.ones((3, 20, 20), np.uint8))
    lab = np.zeros((20, 20), np.uint8)
    lab[:, 10:] = 1
    write(tmp_path / "l.tif", lab)
    with rasterio.open(tmp_path / "l.tif") as src:
        from rasterio.vrt import WarpedVRT

        with WarpedVRT(src, crs="EPSG:3857") as vrt:
            profile = vrt.profile | {"driver": "GTiff"}
            data = vrt.read()
    with rasterio.open(tmp_path / "l3857.tif", "w", **profile) as dst:
        dst.write(data)
    dm = SegmentationDataModule(
        images=[str(tmp_path / "i.tif")],
        labels=[str(tmp_path / "l3857.tif")],
        label_map={0: 0, 1: 1},
    )
    dm.setup("fit")
    mask = dm.datasets["train"][0]["mask"]
    agree = (mask[:, :9] == 0).float().mean() + (mask[:, 11:] == 1).float().mean()
    assert agree / 2 > 0.95


def test_grids_that_do_not_overlap(tmp_path):
    write(tmp_path / "a.tif", np.ones((3, 20, 20), np.uint8))
    write(
        tmp_path / "b.tif",
        np.ones((3, 20, 20), np.uint8),
        transform=from_origin(600000, 4600000, 10, 10),
    )
    write(tmp_path / "l.tif", np.zeros((20, 20), np.uint8))
    dm = ChangeDataModule(
        images1=[str(tmp_path / "a.tif")],
        images2=[str(tmp_path / "b.tif")],
        labels=[str(tmp_path / "l.tif")],
    )
    with pytest.raises(
        DensekitError, match=r"b.tif does not overlap .*a.tif: .*bounds \(600000.*bounds \(500000"
    ):
        dm.setup("fit")


def test_real_oscd_city_with_a_smaller_second_date():
    root = needs_shared_data("oscd-subset")
    city = root / "images" / "hongkong"
    g1, _ = reference_grid(str(city / "imgs_1"))
    g2, _ = reference_grid(str(city / "imgs_2"))
    assert (g1.width, g1.height) == (540, 695) and (g2.width, g2.height) == (538, 693)
    label = root / "train_labels" / "hongkong" / "cm" / "hongkong-cm.tif"
    assert not grid_of(str(label)).georeferenced
    dm = ChangeDataModule(
        images1=[str(city / "imgs_1")],
        images2=[str(city / "imgs_2")],
        labels=[str(label)],
        window=128,
        label_map={1: 0, 2: 1},
    )
    dm.setup("fit")
    item = dm.datasets["train"][0]
    assert item["image1"].shape == item["image2"].shape == (13, 128, 128)
    assert set(item["mask"].unique().tolist()) <= {0, 1, 255}


def test_nodata_override_is_left_out_when_a_band_is_resampled(tmp_path):
    """A 20 m band with an untagged -9999 fill, warped onto the 10 m grid: with ``nodata`` the
    fill is the warp's source nodata, so no blend of -9999 and valid values becomes a pixel."""
    folder = tmp_path / "img"
    folder.mkdir()
    b02 = np.full((40, 40), 500, np.int16)
    b02[:, :10] = -9999
    b05 = np.full((20, 20), 700, np.int16)
    b05[:, :5] = -9999  # no nodata tag in either file
    write(folder / "x_B02.tif", b02)
    write(folder / "x_B05.tif", b05, transform=from_origin(500000, 4600000, 20, 20))
    write(tmp_path / "lbl.tif", np.ones((40, 40), np.uint8))
    dm = SegmentationDataModule(
        images=[str(folder)], labels=[str(tmp_path / "lbl.tif")], nodata=-9999
    )
    dm.setup("fit")
    item = dm.datasets["train"][0]
    x, valid = item["image"], item["mask"] != 255
    assert (x[0][valid] == 500).all() and (x[1][valid] == 700).all()
    assert torch.isnan(x[:, ~valid]).all()
    assert not valid[:, :10].any() and valid[:, 12:].all()
