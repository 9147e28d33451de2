"""The one DICOM pixel decoder: unreadable files, undecodable pixel data named with its syntax
and the package to install, and the modality transform of a slice."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import RLELossless

from densekit.data.dicom_pixels import decode_pixels, modality_values, read_dicom
from densekit.errors import InputImageError


def test_a_file_that_is_not_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("not dicom")
    with pytest.raises(InputImageError, match=r"notes\.dcm: not a readable DICOM file"):
        read_dicom(path)


def test_undecodable_pixel_data_names_file_syntax_and_package(tmp_path):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.Rows = 2
    ds.Columns = 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = b"\x00" * 6  # not RLE segments
    with pytest.raises(InputImageError) as err:
        decode_pixels(ds, tmp_path / "slice.dcm")
    message = str(err.value)
    expected = [
        "slice.dcm: cannot decode pixel data with transfer syntax RLE Lossless",
        "1.2.840.10008.1.2.5",
        "install pylibjpeg and pylibjpeg-rle",
    ]
    for text in expected:
        assert text in message


def test_modality_values_of_the_file_or_of_one_frame():
    ds = Dataset()
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1024
    pixels = np.array([[0, 1], [1000, 4095]], np.uint16)
    values = modality_values(pixels, ds)
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, pixels * 2.0 - 1024)
    np.testing.assert_array_equal(modality_values(pixels, ds, (0.5, 10.0)), pixels * 0.5 + 10)
