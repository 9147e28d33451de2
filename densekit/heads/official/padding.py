"""Centre padding to the patch grid, as Meta's heads pad their inputs, and the way back.

Meta's released heads do not pad on the bottom and right as densekit's own heads do
(:func:`densekit.backbones.pad_to_multiple`): a side of ``n`` pixels becomes ``N = ceil(n / p) * p``
pixels with ``(N - n) // 2`` zeros before it (top, left) and the rest after it (bottom, right).
100 px at ``p = 16`` -> 6 + 100 + 6 = 112; 120 px -> 4 + 120 + 4 = 128; 98 px at ``p = 14``
stays 98.

A map predicted on a grid of the padded image (any resolution) is put back on the image's pixels
by resizing it to ``N`` pixels (bilinear, ``align_corners=False``) and cutting the padding off:
:func:`to_padded_image_and_crop`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def centre_padding(n: int, multiple: int) -> tuple[int, int]:
    """Pixels added ``(before, after)`` a side of ``n`` pixels to reach a multiple of
    ``multiple``."""
    total = -n % multiple
    return total // 2, total - total // 2


def padded_size(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """``(H, W)`` rounded up to multiples of ``multiple``."""
    return size[0] + (-size[0] % multiple), size[1] + (-size[1] % multiple)


def centre_pad(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad ``(B, C, H, W)`` on all sides to the next multiples of ``multiple`` (centred)."""
    top, bottom = centre_padding(x.shape[-2], multiple)
    left, right = centre_padding(x.shape[-1], multiple)
    if not (top or bottom or left or right):
        return x
    return F.pad(x, (left, right, top, bottom))


def to_padded_image_and_crop(y: Tensor, size: tuple[int, int], multiple: int) -> Tensor:
    """A map ``(B, C, h, w)`` covering the centre-padded image, on the image's ``size`` pixels.

    ``y`` is resized to the padded size (bilinear, ``align_corners=False``), then the padding is
    cut off, so each output pixel lies where its input pixel was.
    """
    full = padded_size(size, multiple)
    if tuple(y.shape[-2:]) != full:
        y = F.interpolate(y, size=full, mode="bilinear", align_corners=False)
    top, _ = centre_padding(size[0], multiple)
    left, _ = centre_padding(size[1], multiple)
    return y[..., top : top + size[0], left : left + size[1]]
