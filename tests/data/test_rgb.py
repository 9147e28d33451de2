"""read_rgb: 2D picture files as RGB in [0, 1], written here with Pillow, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from densekit.data.rgb import read_rgb
from densekit.errors import InputImageError


def test_grey_16_bit_palette_and_alpha(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey).save(tmp_path / "grey.png")
    x = read_rgb(str(tmp_path / "grey.png"))
    assert x.shape == (3, 3, 4) and x.dtype == np.float32
    np.testing.assert_array_equal(x, np.repeat(grey[None] / np.float32(255), 3, axis=0))

    deep = np.full((2, 2), 65535, np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_rgb(str(tmp_path / "deep.png")), np.ones((3, 2, 2)))

    palette = Image.fromarray(np.array([[0, 1]], np.uint8), mode="P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(
        read_rgb(str(tmp_path / "palette.png"))[:, 0], [[1, 0], [0, 0], [0, 1]]
    )

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 1] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    x = read_rgb(str(tmp_path / "rgba.png"))
    assert x.shape == (3, 2, 2) and (x[1] == 1).all() and (x[[0, 2]] == 0).all()


def test_unreadable_and_float_files_are_refused(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(InputImageError, match=r"notes\.png is not a readable image"):
        read_rgb(str(tmp_path / "notes.png"))
    Image.fromarray(np.zeros((2, 2), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(InputImageError, match=r"float\.tif: float32 pixels; 8- or 16-bit"):
        read_rgb(str(tmp_path / "float.tif"))
