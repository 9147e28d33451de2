"""DICOM pixel data, decoded once for every reader: the whole file, its stored values (pydicom
with the pylibjpeg plugins), the modality transform of a slice and the range of stored values.

Both DICOM readers go through here: :func:`densekit.data.images.read_image` (one image, then its
VOI window) and :func:`densekit.data.dicom_series.read_series` (a volume, no window). A file
that is not DICOM, pixel data in a transfer syntax no installed plugin decodes, or damaged
(truncated) pixel data is an :class:`~densekit.errors.InputImageError` naming the file (and the
syntax and what to install, or the damage). A Siemens mosaic is refused by name
(:func:`refuse_mosaic`).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, get_decoder

from densekit.errors import InputImageError

# Transfer syntax UID prefix -> what to install to decode it.
DECODERS = {
    "1.2.840.10008.1.2.4.9": "pylibjpeg and pylibjpeg-openjpeg (JPEG 2000)",
    "1.2.840.10008.1.2.4.20": "pylibjpeg and pylibjpeg-openjpeg (HTJ2K)",
    "1.2.840.10008.1.2.5": "pylibjpeg and pylibjpeg-rle (RLE)",
    "1.2.840.10008.1.2.4.8": "pyjpegls, or pylibjpeg-libjpeg (GPL) (JPEG-LS)",
    "1.2.840.10008.1.2.4.5": "pillow, or pylibjpeg-libjpeg (GPL) (JPEG baseline/extended)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg (GPL) or python-gdcm (JPEG lossless)",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg (GPL) or python-gdcm (JPEG lossless)",
}


def read_dicom(path: Path) -> Dataset:
    """A whole DICOM file (its pixel data is decoded by :func:`decode_pixels`).

    Raises:
        InputImageError: the file is not a readable DICOM file.
    """
    try:
        return pydicom.dcmread(path)
    except Exception as err:  # pydicom raises InvalidDicomError, OSError, EOFError, ...
        raise InputImageError(f"{path}: not a readable DICOM file ({err})") from err


def decode_pixels(ds: Dataset, path: Path) -> np.ndarray:
    """The stored pixel values of ``ds`` (every frame), as pydicom decodes them.

    Args:
        ds: the file, from :func:`read_dicom`.
        path: where it was read from, for the error message.

    Raises:
        InputImageError: the pixel data cannot be decoded; the message names the file, the
            transfer syntax (name and UID) and the package to install.
    """
    refuse_mosaic(ds, path)
    try:
        return ds.pixel_array
    except Exception as err:  # a missing plugin, damaged data, a missing attribute, ...
        raise InputImageError(f"{path}: {why_undecodable(ds, err)}") from err


# Siemens' private (0019,100A) NumberOfImagesInMosaic, in the "SIEMENS MR HEADER" block
MOSAIC_COUNT = (0x0019, 0x100A)


def refuse_mosaic(ds: Dataset, path: Path) -> None:
    """A Siemens mosaic (ImageType MOSAIC, or NumberOfImagesInMosaic) tiles a volume's slices
    in one image; read as one slice its geometry is wrong, so it is refused by name.

    Raises:
        InputImageError: the file is a mosaic; the message names the tags and dcm2niix.
    """
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    count = ds.get(MOSAIC_COUNT)
    if "MOSAIC" not in image_type and count is None:
        return
    marks = []
    if "MOSAIC" in image_type:
        marks.append("ImageType contains MOSAIC")
    if count is not None:
        marks.append(f"NumberOfImagesInMosaic (0019,100A) = {_private_number(count.value)}")
    raise InputImageError(
        f"{path}: a Siemens mosaic ({'; '.join(marks)}): its slices are tiles of one image, "
        "which densekit does not split (read as one slice, its geometry would be wrong); "
        "convert the series with dcm2niix and give the NIfTI"
    )


def _private_number(value: object) -> str:
    """A private tag's number: read as US when the implicit VR left it as bytes."""
    if isinstance(value, bytes) and len(value) in (2, 4):
        return str(int.from_bytes(value, "little"))
    return str(value)


def why_undecodable(ds: Dataset, err: Exception) -> str:
    """Why pydicom could not decode the pixel data, in words: a damaged (truncated) file, a
    decoder that failed on the data, or no decoder installed for the transfer syntax."""
    uid = str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", "")) or "absent"
    name = getattr(pydicom.uid.UID(uid), "name", uid) if uid != "absent" else uid
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    stored = ds.get("PixelData")
    short = re.search(r"less than expected \((\d+) vs (\d+) bytes\)", reason)
    if short or (isinstance(stored, bytes) and len(stored) == 0):
        have, need = short.groups() if short else ("0", "more")
        return (
            f"damaged: the pixel data holds {have} bytes where its header (rows, columns, "
            f"frames, bits) needs {need}: a truncated or corrupted file (pydicom: {reason})"
        )
    syntax = pydicom.uid.UID(uid) if uid != "absent" else None
    decoder = None
    if syntax is not None and syntax.is_compressed:
        with contextlib.suppress(Exception):
            decoder = get_decoder(syntax)
    if syntax is not None and (not syntax.is_compressed or (decoder and decoder.is_available)):
        return (
            f"damaged: the pixel data ({name}, {uid}) cannot be decoded although a decoder is "
            f"installed: a corrupted file or an encoding error (pydicom: {reason})"
        )
    found = [p for prefix, p in DECODERS.items() if uid.startswith(prefix)]
    package = found[0] if found else "a pydicom pixel data plugin that supports it"
    return (
        f"cannot decode pixel data with transfer syntax {name} ({uid}); install {package}. "
        f"pydicom: {reason}"
    )


def modality_values(
    pixels: np.ndarray, ds: Dataset, rescale: tuple[float, float] | None = None
) -> np.ndarray:
    """The modality transform of one slice as float32 (CT: Hounsfield units).

    Args:
        pixels: the slice's stored values.
        ds: its file, whose RescaleSlope/Intercept or Modality LUT apply when ``rescale`` is
            None.
        rescale: ``(slope, intercept)`` of one frame of an enhanced multi-frame file (from its
            functional groups), instead of the file's.
    """
    if rescale is None:
        return apply_modality_lut(pixels, ds).astype(np.float32)
    return (pixels * rescale[0] + rescale[1]).astype(np.float32)


def value_range(ds: Dataset, rescale: tuple[float, float] | None) -> tuple[float, float]:
    """Lowest and highest value the stored bits can hold, after the modality transform."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    ends = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
    values = ends * rescale[0] + rescale[1] if rescale else apply_modality_lut(ends, ds)
    return float(np.min(values)), float(np.max(values))
