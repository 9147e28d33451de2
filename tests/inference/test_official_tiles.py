"""Canopy height from Meta's CHMv2 head (a tiny one, from the shared fixtures) tiled over a real
GeoTIFF: metres as float32 COG on the input's grid, tiles equal to the untiled forward, pixels
where their content is."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from helpers import needs_shared_data
from official_heads import needs_head_fixtures, tiny_head
from rasterio.windows import Window

from densekit.cli import main
from densekit.models import DenseModel

TILE, OVERLAP = 128, 32
STEP = TILE - OVERLAP


def crop(src_path, dest, rows: slice, cols: slice, shift_rows: int = 0):
    """A crop of a real raster (its CRS, the window's transform); with ``shift_rows`` the
    content moves down by that many rows, the rows above filled with other real pixels."""
    with rasterio.open(src_path) as src:
        window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        data = src.read(window=window)
        profile = src.profile | {
            "height": data.shape[1] + shift_rows,
            "width": data.shape[2],
            "transform": src.window_transform(window),
            "tiled": False,
        }
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
        if shift_rows:
            above = src.read(window=Window(cols.start, 300, data.shape[2], shift_rows))
            data = np.concatenate([above, data], axis=1)
    with rasterio.open(dest, "w", **profile) as dst:
        dst.write(data)
    return dest


@pytest.fixture(scope="module")
def chm_checkpoint(tmp_path_factory):
    needs_head_fixtures()
    t = tiny_head("dinov3_vits16_tiny_chmv2_dpt_head_tiny")
    ckpt = tmp_path_factory.mktemp("chm") / "chm.ckpt"
    arch = [a for k, v in t.overrides.items() for a in ("--arch", f"{k}={v}")]
    argv = ["import-head", "--kind", "dinov3_chmv2", "--head", str(t.path)]
    argv += ["--backbone", t.backbone, "--weights", str(t.backbone_weights), "--out", str(ckpt)]
    assert main([*argv, "--layers", ",".join(map(str, t.layers)), *arch]) == 0
    return ckpt


def tile(ckpt, src, out):
    argv = ["tile", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out)]
    assert main([*argv, "--tile", str(TILE), "--overlap", str(OVERLAP), "--no-progress"]) == 0
    with rasterio.open(out) as d:
        return d.read(1)


def raw(src):
    """The raster as the tiles hold it: float bands, all NaN where any band is nodata."""
    with rasterio.open(src) as d:
        x = d.read().astype(np.float32)
        x[:, (d.read_masks() == 0).any(0)] = np.nan
    return torch.from_numpy(x)


def test_chmv2_tiles_a_real_geotiff_into_metres(chm_checkpoint, tmp_path):
    real = needs_shared_data("rasterio-test-rasters", "RGB.byte.tif")
    src = crop(real, tmp_path / "rgb.tif", slice(0, 256), slice(300, 620))
    height = tile(chm_checkpoint, src, tmp_path / "chm.tif")
    with rasterio.open(src) as s, rasterio.open(tmp_path / "chm.tif") as d:
        assert (d.crs, d.transform, d.shape) == (s.crs, s.transform, s.shape)
        assert d.dtypes[0] == "float32" and d.units == ("m",)
        assert d.descriptions == ("canopy_height",)
        assert d.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        nodata = (s.read_masks() == 0).any(0)  # a pixel is nodata where any band is
    assert nodata.any() and (~nodata).any()  # the crop holds the scene's black corner
    assert np.array_equal(np.isnan(height), nodata)
    values = height[~nodata]
    assert values.min() >= 0.001 and values.max() <= 96.0

    # where one tile alone covers the raster, the tiled map is the untiled forward of that tile
    model = DenseModel.from_checkpoint(chm_checkpoint)
    x = raw(src)
    untiled = model.predict(x[None, :, :TILE, :TILE])[0]
    tiled = height[:STEP, :STEP]
    covered = ~nodata[:STEP, :STEP]
    assert np.abs(tiled - untiled[:STEP, :STEP])[covered].max() < 1e-4


def test_shifted_content_gives_the_same_heights_shifted(chm_checkpoint, tmp_path):
    """The same real pixels one tile step lower in the raster: the heights move with them."""
    real = needs_shared_data("rasterio-test-rasters", "RGB.byte.tif")
    rows, cols = slice(200, 456), slice(250, 570)  # inside the scene (no nodata)
    a = crop(real, tmp_path / "a.tif", rows, cols)
    b = crop(real, tmp_path / "b.tif", rows, cols, shift_rows=STEP)
    ha = tile(chm_checkpoint, a, tmp_path / "ha.tif")
    hb = tile(chm_checkpoint, b, tmp_path / "hb.tif")
    # rows 32-96 of a lie in its first row of tiles only; in b they are rows 128-192, in its
    # second row of tiles only, which sees the same pixels as a's first
    only_a = ha[OVERLAP:STEP, :STEP]
    only_b = hb[OVERLAP + STEP : 2 * STEP, :STEP]
    assert np.isfinite(only_a).all()
    assert np.abs(only_a - only_b).max() < 1e-4
    assert np.nanmax(np.abs(ha[OVERLAP:STEP, :STEP] - hb[OVERLAP:STEP, :STEP])) > 1e-2


@pytest.mark.slow
def test_the_whole_scene_gives_a_cog_with_overviews(chm_checkpoint, tmp_path):
    real = needs_shared_data("rasterio-test-rasters", "RGB.byte.tif")
    out = tmp_path / "chm.tif"
    assert (
        main(
            [
                "tile",
                "--checkpoint",
                str(chm_checkpoint),
                "--input",
                str(real),
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    with rasterio.open(real) as s, rasterio.open(out) as d:
        assert (d.crs, d.transform, d.shape) == (s.crs, s.transform, s.shape)
        assert d.overviews(1) == [2]
        height = d.read(1)
    values = height[np.isfinite(height)]
    assert values.size > 0.6 * height.size and 0.001 <= values.min() <= values.max() <= 96


def test_the_rasters_it_reads_are_checked(chm_checkpoint, tmp_path, capsys):
    """The imported head reads three unnamed uint8 bands: a real RGBA raster is refused naming
    both layouts, and read with --bands 1,2,3."""
    rgba = needs_shared_data("rasterio-test-rasters", "RGBA.byte.tif")
    src = crop(rgba, tmp_path / "rgba.tif", slice(200, 328), slice(250, 378))
    out = tmp_path / "chm.tif"
    argv = ["tile", "--checkpoint", str(chm_checkpoint), "--input", str(src)]
    argv += ["--output", str(out), "--tile", str(TILE), "--overlap", "0", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "4 bands, uint8" in err and "3 bands, uint8 (0..255), no band names" in err
    assert not out.exists()
    assert main([*argv, "--bands", "1,2,3"]) == 0
    with rasterio.open(out) as d:
        assert d.count == 1 and d.units == ("m",)
