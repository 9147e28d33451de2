#!/usr/bin/env python3
"""Generate the small test images in this folder (run from anywhere; rewrites the files).

GeoTIFFs have a real CRS (UTM 33N) and transform; the DICOM files carry real tags (a CT with
rescale and window, a MONOCHROME1 radiograph, an RT Plan without pixels). Patient tags are fake.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

HERE = Path(__file__).resolve().parent
CRS = "EPSG:32633"
TRANSFORM = from_origin(500000.0, 4600000.0, 10.0, 10.0)


def write_tif(name: str, data: np.ndarray, **kw) -> None:
    colorinterp = kw.pop("colorinterp", None)
    descriptions = kw.pop("descriptions", None)
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "crs": CRS,
        "transform": TRANSFORM,
        **kw,
    }
    with rasterio.open(HERE / name, "w", **profile) as dst:
        dst.write(data)
        if colorinterp:
            dst.colorinterp = colorinterp
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)


def rasters(rng: np.random.Generator) -> None:
    h, w = 36, 40
    rgb = rng.integers(1, 255, (3, h, w), dtype=np.uint8)
    rgb[:, :4, :6] = 0  # nodata corner
    rgb_ci = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    write_tif("rgb_uint8.tif", rgb, nodata=0, colorinterp=rgb_ci)
    write_tif(
        "bgr_uint8.tif",
        rgb[::-1].copy(),
        colorinterp=[ColorInterp.blue, ColorInterp.green, ColorInterp.red],
    )
    s2 = rng.integers(0, 10000, (4, h, w), dtype=np.uint16)
    write_tif("s2_uint16.tif", s2, descriptions=["B2", "B3", "B4", "B8"])
    f = rng.normal(0.3, 0.1, (3, h, w)).astype(np.float32)
    f[1, 10, 12] = np.nan
    f[0, 20, 3] = np.inf
    write_tif("nonfinite_float32.tif", f)
    write_tif("small_uint8.tif", rgb[:, :10, :10].copy())
    # nodata=0 occurs in band 1 only: a pixel is nodata only for the bands that hold it
    u16 = rng.integers(100, 4000, (3, h, w), dtype=np.uint16)
    u16[0, 5:10, 5:25] = 0
    write_tif("nodata_band1_uint16.tif", u16, nodata=0)
    # NaN declared as the file's nodata value
    fn = rng.normal(0.3, 0.1, (3, h, w)).astype(np.float32)
    fn[:, 30:, 30:] = np.nan
    write_tif("nan_nodata_float32.tif", fn, nodata=float("nan"), colorinterp=rgb_ci)
    grey = rng.integers(0, 255, (1, 40, 40), dtype=np.uint8)
    with rasterio.open(
        HERE / "grey.png", "w", driver="PNG", height=40, width=40, count=1, dtype="uint8"
    ) as dst:
        dst.write(grey)
    (HERE / "corrupt.tif").write_bytes(
        b"II*\x00" + bytes(rng.integers(0, 255, 200, dtype=np.uint8))
    )


def dicoms(rng: np.random.Generator) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RTPlanStorage, generate_uid

    def base(sop_class: str, modality: str) -> Dataset:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[modality, "densekit-test"])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.PatientName = "Doe^Jane"  # fake PHI: must never appear in outputs
        ds.PatientID = "DK-TEST-0001"
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", "densekit-test"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[modality, "series", "densekit-test"])
        return ds

    def image(ds: Dataset, pixels: np.ndarray, photometric: str, signed: bool) -> None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.PixelData = pixels.tobytes()

    ct = base(CTImageStorage, "CT")
    hu = np.full((32, 32), -1000, np.int16)  # air around a soft-tissue disc with a bright core
    yy, xx = np.mgrid[:32, :32]
    hu[(yy - 16) ** 2 + (xx - 16) ** 2 < 12**2] = 40
    hu[(yy - 16) ** 2 + (xx - 16) ** 2 < 4**2] = 700
    raw = (hu + 1024).astype(np.int16)  # stored values; RescaleIntercept brings back HU
    image(ct, raw, "MONOCHROME2", signed=True)
    ct.RescaleSlope, ct.RescaleIntercept = 1, -1024
    ct.WindowCenter, ct.WindowWidth = 40, 400
    ct.save_as(HERE / "ct_window.dcm", enforce_file_format=True)

    cr = base("1.2.840.10008.5.1.4.1.1.1", "CR")  # Computed Radiography Image Storage
    image(cr, np.tile(np.arange(32, dtype=np.uint16) * 100, (32, 1)), "MONOCHROME1", signed=False)
    cr.save_as(HERE / "cr_monochrome1.dcm", enforce_file_format=True)

    plan = base(RTPlanStorage, "RTPLAN")
    plan.RTPlanLabel = "test"
    plan.save_as(HERE / "rtplan.dcm", enforce_file_format=True)


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    rasters(rng)
    dicoms(rng)
    print(f"wrote test images to {HERE}")
