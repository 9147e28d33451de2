"""The one DICOM pixel decoder: unreadable files, undecodable pixel data named with its syntax
and the package to install, and the modality transform of a slice."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, RLELossless

from densekit.data.dicom_pixels import decode_pixels, modality_values, read_dicom
from densekit.errors import InputImageError


def test_a_file_that_is_not_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("not dicom")
    with pytest.raises(InputImageError, match=r"notes\.dcm: not a readable DICOM file"):
        read_dicom(path)


def tiny_dataset(syntax, pixel_data: bytes) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.Rows = 2
    ds.Columns = 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixel_data
    return ds


def test_undecodable_pixel_data_names_file_syntax_and_package(tmp_path):
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG lossless decoder is installed here: no missing plugin to name")
    ds = tiny_dataset(JPEGLosslessSV1, b"\x00" * 6)
    with pytest.raises(InputImageError) as err:
        decode_pixels(ds, tmp_path / "slice.dcm")
    message = str(err.value)
    expected = [
        "slice.dcm: cannot decode pixel data with transfer syntax JPEG Lossless",
        "1.2.840.10008.1.2.4.70",
        "install pylibjpeg-libjpeg (GPL) or python-gdcm",
    ]
    for text in expected:
        assert text in message


def test_damaged_pixel_data_is_named_damaged_not_a_missing_plugin(tmp_path):
    """RLE is decoded by pydicom itself: garbage RLE is damage, as is a truncated native
    pixel data element (2 of 8 bytes)."""
    ds = tiny_dataset(RLELossless, b"\x00" * 6)  # not RLE segments
    with pytest.raises(InputImageError, match=r"slice.dcm: damaged: the pixel data \(RLE"):
        decode_pixels(ds, tmp_path / "slice.dcm")
    ds = tiny_dataset(ExplicitVRLittleEndian, b"\x00" * 2)
    with pytest.raises(
        InputImageError, match=r"slice.dcm: damaged: the pixel data holds 2 bytes .* needs 8"
    ) as err:
        decode_pixels(ds, tmp_path / "slice.dcm")
    assert "install" not in str(err.value)


def test_modality_values_of_the_file_or_of_one_frame():
    ds = Dataset()
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1024
    pixels = np.array([[0, 1], [1000, 4095]], np.uint16)
    values = modality_values(pixels, ds)
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, pixels * 2.0 - 1024)
    np.testing.assert_array_equal(modality_values(pixels, ds, (0.5, 10.0)), pixels * 0.5 + 10)
