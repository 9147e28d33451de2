"""A 2D picture file (PNG, JPEG; 8 or 16 bit, grey, palette or colour) as RGB values in [0, 1].

Read through Pillow, for sets of 2D pictures whose frames differ in size (endoscopy, fundus
photographs); rasters and DICOM files are read by :func:`densekit.data.images.read_image`.
"""

from __future__ import annotations

import numpy as np

from densekit.errors import InputImageError


def read_rgb(path: str) -> np.ndarray:
    """A 2D image file as ``(3, H, W)`` float32 in [0, 1] (grey repeated, alpha dropped)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB") if img.mode in ("P", "PA", "CMYK") else img)
    except (OSError, UnidentifiedImageError) as err:
        raise InputImageError(f"{path} is not a readable image: {err}") from err
    if array.dtype not in (np.uint8, np.uint16):
        raise InputImageError(f"{path}: {array.dtype} pixels; 8- or 16-bit images are read")
    x = array.astype(np.float32) / np.iinfo(array.dtype).max
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    if x.shape[0] < 3:  # grey, or grey and alpha
        x = np.repeat(x[:1], 3, axis=0)
    return np.ascontiguousarray(x[:3])
