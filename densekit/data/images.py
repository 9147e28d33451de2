"""Reading one image (GeoTIFF, PNG/JPEG or a DICOM file) into bands, names and a validity mask.

Rasters go through rasterio (GDAL reads GeoTIFF, PNG and JPEG alike); DICOM through pydicom
(decoded as the series reader decodes it, :mod:`densekit.data.dicom_pixels`), then the modality
LUT (RescaleSlope/Intercept) and the VOI window the file carries apply, and MONOCHROME1 is
inverted so that bright means dense. DICOM values come out in [0, 1] (the window, or
the image range when there is none). No patient tag is read into the result.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from densekit.errors import InputImageError


@dataclass
class Image:
    """An image as ``(C, H, W)`` values with what is known about its bands."""

    path: str
    array: np.ndarray
    band_names: list[str | None]
    colorinterp: list[str]
    invalid: np.ndarray | None  # (C, H, W) True where the file marks a band's pixel as nodata
    default_scale: float | None  # multiplier to [0, 1] when the data type implies one

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.array.shape[1]), int(self.array.shape[2])


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_image(path: str | Path, frame: int | None = None) -> Image:
    """Read a whole image; errors name the file and what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        raise InputImageError(f"{path}: is a folder, an image file is needed")
    if not path.is_file():
        raise InputImageError(f"{path}: no such file")
    if is_dicom(path):
        return _read_dicom(path, frame)
    if frame is not None:
        raise InputImageError(f"{path}: frame applies to multi-frame DICOM files only")
    return _read_raster(path)


def _read_raster(path: Path) -> Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                array = src.read()
                names = list(src.descriptions)
                colorinterp = [c.name for c in src.colorinterp]
                invalid = None
                if any(v is not None for v in src.nodatavals) or "alpha" in colorinterp:
                    invalid = src.read_masks() == 0  # per band: nodata or alpha
                dtype = src.dtypes[0]
    except RasterioIOError as e:
        raise InputImageError(f"{path}: not a readable raster ({e})") from None
    scale = {"uint8": 1 / 255}.get(dtype)
    if dtype == "uint16" and path.suffix.lower() == ".png":
        scale = 1 / 65535
    return Image(str(path), array, names, colorinterp, invalid, scale)


def _read_dicom(path: Path, frame: int | None) -> Image:
    from pydicom.pixels import apply_voi_lut

    from densekit.data.dicom_pixels import decode_pixels, modality_values, read_dicom

    ds = read_dicom(path)
    if "PixelData" not in ds:
        modality = ds.get("Modality", "unknown")
        raise InputImageError(
            f"{path}: DICOM object without pixel data (Modality {modality}, SOP class "
            f"{getattr(ds.get('SOPClassUID'), 'name', 'unknown')}); an image is needed"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and frame is None:
        raise InputImageError(
            f"{path}: multi-frame DICOM with {frames} frames; choose one with frame"
        )
    if frame is not None and not 0 <= frame < frames:
        raise InputImageError(f"{path}: frame {frame} out of range 0..{frames - 1}")
    pixels = decode_pixels(ds, path)
    if frames > 1:
        pixels = pixels[frame]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    samples = int(ds.get("SamplesPerPixel", 1))
    rgb_names: list[str | None] = ["red", "green", "blue"]
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(pixels, ds)  # 16-bit entries (8-bit tables are shifted up)
        array = np.moveaxis(rgb.astype(np.float32), -1, 0) / np.float32(np.iinfo(rgb.dtype).max)
        return Image(str(path), array, rgb_names, ["red", "green", "blue"], None, 1.0)
    if samples == 3:
        # pydicom returns RGB for every colour space (YBR_FULL/_422 converted on decoding,
        # YBR_RCT/ICT by the JPEG 2000 decoder).
        top = np.float32(2 ** int(ds.BitsStored) - 1)
        array = np.moveaxis(pixels.astype(np.float32), -1, 0) / top
        return Image(str(path), array, rgb_names, ["red", "green", "blue"], None, 1.0)
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        raise InputImageError(
            f"{path}: photometric interpretation {photometric} with {samples} samples per "
            "pixel is not supported (MONOCHROME1/2, RGB, YBR and PALETTE COLOR are)"
        )
    values = modality_values(pixels, ds)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        scaled = _linear_window(values, _first(ds.WindowCenter), _first(ds.WindowWidth))
    else:
        if "VOILUTSequence" in ds:
            values = apply_voi_lut(values, ds, index=0).astype(np.float32)
        lo, hi = float(values.min()), float(values.max())
        scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return Image(str(path), scaled[None].astype(np.float32), ["grey"], ["gray"], None, 1.0)


def _first(value: object) -> float:
    """First value of a possibly multi-valued DICOM attribute."""
    try:
        return float(value[0])  # type: ignore[index]
    except TypeError:
        return float(value)  # type: ignore[arg-type]


def _linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2.1) mapped to [0, 1]."""
    if width < 1:
        raise InputImageError(f"DICOM WindowWidth {width} is below 1")
    if width == 1:
        return (x >= center - 0.5).astype(np.float32)
    y = (x - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(y, 0.0, 1.0).astype(np.float32)
