"""DICOM pixel data: decoding (pydicom with the pylibjpeg plugins), the range of stored values,
and missing slices interpolated between their neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from densekit.errors import DensekitError

# Transfer syntax UID prefix -> what to install to decode it.
DECODERS = {
    "1.2.840.10008.1.2.4.9": "pylibjpeg-openjpeg (JPEG 2000)",
    "1.2.840.10008.1.2.4.20": "pylibjpeg-openjpeg (HTJ2K)",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (RLE)",
    "1.2.840.10008.1.2.4.8": "pyjpegls, or pylibjpeg-libjpeg (GPL) (JPEG-LS)",
    "1.2.840.10008.1.2.4.5": "pillow, or pylibjpeg-libjpeg (GPL) (JPEG baseline/extended)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg (GPL) or python-gdcm (JPEG lossless)",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg (GPL) or python-gdcm (JPEG lossless)",
}


def decode(path: Path) -> tuple[Dataset, np.ndarray]:
    """A file and its decoded pixels; an undecodable transfer syntax names what to install."""
    ds = pydicom.dcmread(path)
    try:
        return ds, ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError, AttributeError) as err:
        uid = str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", "")) or "absent"
        name = getattr(pydicom.uid.UID(uid), "name", uid) if uid != "absent" else uid
        found = [p for prefix, p in DECODERS.items() if uid.startswith(prefix)]
        package = found[0] if found else "a pydicom pixel data plugin that supports it"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DensekitError(
            f"cannot decode the pixel data of {path}: transfer syntax {name} ({uid}); "
            f"install {package}. pydicom: {reason}"
        ) from err


def value_range(ds: Dataset, rescale: tuple[float, float] | None) -> tuple[float, float]:
    """Lowest and highest value the stored bits can hold, after the modality transform."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    ends = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
    values = ends * rescale[0] + rescale[1] if rescale else apply_modality_lut(ends, ds)
    return float(np.min(values)), float(np.max(values))


def interpolate_slices(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Slices at grid positions ``0 .. index[-1]`` from those at ``index`` (sorted), linearly."""
    grid = np.arange(int(index[-1]) + 1)
    below = np.searchsorted(index, grid, side="right") - 1
    above = np.minimum(below + 1, len(index) - 1)
    weight = ((grid - index[below]) / np.maximum(index[above] - index[below], 1))[:, None, None]
    return ((1 - weight) * array[below] + weight * array[above]).astype(array.dtype)
