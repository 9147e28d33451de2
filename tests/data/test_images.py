"""Reading single images: rasters through rasterio, DICOM through pydicom (real files too)."""

import numpy as np
import pydicom
import pytest
from helpers import TEST_DATA, needs_shared_data

from densekit.data.images import read_image
from densekit.errors import InputImageError

IMAGES = TEST_DATA / "images"


def test_geotiff_bands_names_and_nodata():
    img = read_image(IMAGES / "rgb_uint8.tif")
    assert img.array.shape == (3, 36, 40) and img.array.dtype == np.uint8
    assert img.colorinterp == ["red", "green", "blue"]
    assert img.default_scale == pytest.approx(1 / 255)
    assert img.invalid is not None and img.invalid.shape == (3, 36, 40)
    assert img.invalid[:, :4, :6].all() and img.invalid.any(0).sum() == 24
    s2 = read_image(IMAGES / "s2_uint16.tif")
    assert s2.band_names == ["B2", "B3", "B4", "B8"] and s2.default_scale is None


def test_png():
    img = read_image(IMAGES / "grey.png")
    assert img.array.shape == (1, 40, 40) and img.default_scale == pytest.approx(1 / 255)


def test_missing_and_corrupt_files():
    with pytest.raises(InputImageError, match=r"nope.tif: no such file"):
        read_image(IMAGES / "nope.tif")
    with pytest.raises(InputImageError, match=r"corrupt.tif: not a readable raster"):
        read_image(IMAGES / "corrupt.tif")


def test_dicom_ct_rescale_and_window():
    img = read_image(IMAGES / "ct_window.dcm")
    assert img.array.shape == (1, 32, 32) and img.default_scale == 1.0
    v = img.array[0]
    # window 40/400 -> [-160, 240] HU; air (-1000) -> 0, the disc at 40 HU -> 0.5, 700 HU -> 1
    assert v[0, 0] == 0.0 and v[16, 16] == 1.0
    assert v[16, 6] == pytest.approx((40 - (40 - 0.5)) / 399 + 0.5, abs=1e-6)


def test_dicom_monochrome1_is_inverted():
    img = read_image(IMAGES / "cr_monochrome1.dcm")
    raw = pydicom.dcmread(IMAGES / "cr_monochrome1.dcm").pixel_array
    assert raw[0, 0] < raw[0, -1] and img.array[0, 0, 0] > img.array[0, 0, -1]


def test_dicom_without_pixels_is_refused():
    with pytest.raises(
        InputImageError, match=r"rtplan.dcm: DICOM object without pixel data \(Modality RTPLAN"
    ):
        read_image(IMAGES / "rtplan.dcm")


def test_phi_is_not_read():
    img = read_image(IMAGES / "ct_window.dcm")
    assert "Doe" not in repr(img.__dict__)


def test_real_dicom_files():
    root = needs_shared_data("pydicom-testfiles")
    ct = read_image(root / "pydicom_test_files" / "CT_small.dcm")
    assert ct.array.shape == (1, 128, 128) and 0 <= ct.array.min() < ct.array.max() <= 1
    j2k = read_image(root / "pydicom_test_files" / "693_J2KI.dcm")  # JPEG 2000 via openjpeg
    assert j2k.array.shape == (1, 512, 512) and j2k.array.std() > 0.01
    rle = read_image(root / "pydicom_test_files" / "MR_small_RLE.dcm")
    plain = read_image(root / "pydicom_test_files" / "MR_small.dcm")
    np.testing.assert_allclose(rle.array, plain.array)
    rgb = read_image(root / "pydicom_test_files" / "SC_rgb_rle.dcm")
    assert rgb.array.shape == (3, 100, 100) and rgb.band_names == ["red", "green", "blue"]
    cr = read_image(root / "pydicom_data_store" / "RG3_UNCR.dcm")  # MONOCHROME1 radiograph
    raw = pydicom.dcmread(root / "pydicom_data_store" / "RG3_UNCR.dcm").pixel_array
    assert np.corrcoef(cr.array[0, ::8, ::8].ravel(), raw[::8, ::8].ravel())[0, 1] < -0.9


def test_real_multiframe_needs_a_frame():
    root = needs_shared_data("pydicom-testfiles")
    path = root / "pydicom_test_files" / "SC_rgb_rle_2frame.dcm"
    with pytest.raises(InputImageError, match=r"multi-frame DICOM with 2 frames"):
        read_image(path)
    assert read_image(path, frame=1).array.shape == (3, 100, 100)
    with pytest.raises(InputImageError, match=r"frame 2 out of range 0..1"):
        read_image(path, frame=2)


def test_real_unsupported_transfer_syntax_names_the_packages():
    root = needs_shared_data("pydicom-testfiles")
    path = root / "pydicom_data_store" / "JPGLosslessP14SV1_1s_1f_8b.dcm"  # needs GPL libjpeg
    with pytest.raises(
        InputImageError, match=r"cannot decode pixel data with transfer syntax JPEG Lossless"
    ):
        read_image(path)


def test_nodata_is_per_band():
    img = read_image(IMAGES / "nodata_band1_uint16.tif")
    assert img.invalid[0].sum() == 100 and not img.invalid[1:].any()


def test_a_folder_is_not_an_image(tmp_path):
    with pytest.raises(InputImageError, match=r"is a folder, an image file is needed"):
        read_image(tmp_path)


def test_real_colour_dicom_in_every_colour_space():
    """RGB, YBR_FULL(_422) (converted by pydicom), YBR_RCT (JPEG 2000) and PALETTE COLOR all
    come out as RGB in [0, 1]; 16-bit RGB is scaled by its own bit depth."""
    root = needs_shared_data("pydicom-testfiles")
    t = root / "pydicom_test_files"
    ref = read_image(root / "pydicom_data_store" / "SC_rgb.dcm").array
    np.testing.assert_allclose(read_image(t / "SC_rgb_rle.dcm").array, ref, atol=0)
    for name in (
        "SC_rgb_dcmtk_+eb+cy+np.dcm",
        "SC_rgb_dcmtk_+eb+cy+n1.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
    ):
        lossy = read_image(t / name).array  # JPEG: small errors, larger at colour edges
        assert np.abs(lossy - ref).mean() < 0.02, name  # a second colour conversion: > 0.2
    ybr = read_image(t / "SC_ybr_full_422_uncompressed.dcm").array
    np.testing.assert_allclose(ybr[:, 0, 0], [1, 0, 0], atol=3 / 255)  # pure red
    rgb16 = read_image(t / "SC_rgb_rle_16bit.dcm").array
    assert rgb16.max() <= 1.0 and rgb16.max() > 0.99
    np.testing.assert_allclose(rgb16, ref, atol=2 / 255)
    rct = read_image(t / "GDCMJ2K_TextGBR.dcm")
    assert rct.array.shape == (3, 400, 400) and rct.array.min() >= 0 and rct.array.max() <= 1
    pal = read_image(t / "examples_palette.dcm")
    assert pal.array.shape == (3, 350, 800) and pal.array.max() <= 1.0
    assert pal.band_names == ["red", "green", "blue"]
