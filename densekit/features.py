"""Patch features of one image, and the classic DINO picture: their first 3 principal components.

Values are normalised in one of two ways, never guessed (:func:`choose_normalization`):

* with the backbone's own statistics (``mean``/``std`` in [0, 1] units) after multiplying the raw
  values by ``scale`` (1/255 for 8-bit images; any other data type needs ``scale`` or statistics);
* with per-band statistics in the file's own units (``densekit stats`` writes them), one
  mean and std per selected band.

More input channels than the backbone's three are an explicit opt-in
(``load_backbone(..., in_chans=N)``) and then need statistics.

This is what ``densekit features`` runs; it is also usable from a notebook::

    from densekit import load_backbone
    from densekit.data.images import read_image
    from densekit.features import prepare_input, extract_features, pca_picture
    bb = load_backbone("dinov2_vits14", weights="dinov2_vits14_pretrain.pth", layers="last")
    x, info = prepare_input(read_image("scene.tif"), bb, bands=(4, 3, 2), scale=1e-4)
    feats = extract_features(bb, x)
    rgb = pca_picture(feats["features"][-1], x.shape[-2:], bb.layer_stride(bb.layers[-1]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from densekit.backbones.base import Backbone, crop_to_image
from densekit.backbones.registry import Normalization
from densekit.data.bands import (
    BandRef,
    BandStats,
    resolve_band_indices,
)
from densekit.data.images import Image
from densekit.errors import InputImageError

_RGB = ("red", "green", "blue")


@dataclass(frozen=True)
class InputNormalization:
    """``(x * scale - mean) / std`` per channel, after band selection."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float
    source: str

    def apply(self, array: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` raw values -> float32 normalised values."""
        if array.shape[0] != len(self.mean):
            raise InputImageError(
                f"{array.shape[0]} bands but {len(self.mean)} normalisation values ({self.source})"
            )
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return ((array.astype(np.float32) * np.float32(self.scale)) - mean) / std


def choose_normalization(
    n_bands: int,
    stats: BandStats | None,
    backbone_norm: Normalization | None,
    scale: float | None,
    source: str,
) -> InputNormalization:
    """Pick the normalisation for ``n_bands`` selected bands; refuse to guess."""
    if stats is not None:
        if len(stats.mean) != n_bands:
            raise InputImageError(
                f"{source}: {n_bands} band(s) selected but the statistics have "
                f"{len(stats.mean)} values"
            )
        return InputNormalization(stats.mean, stats.std, 1.0 if scale is None else scale, "stats")
    if backbone_norm is None:
        raise InputImageError(
            f"{source}: the backbone's input channels were adapted, so it has no statistics of "
            "its own: give per-band statistics"
        )
    if len(backbone_norm.mean) != n_bands:
        raise InputImageError(
            f"{source}: {n_bands} band(s) selected but the backbone's statistics "
            f"({backbone_norm.name}) have {len(backbone_norm.mean)}"
        )
    if scale is None:
        raise InputImageError(
            f"{source}: the data type gives no known value range; say how raw values map to "
            "[0, 1] (e.g. scale 1e-4 for Sentinel-2 reflectance) or give per-band statistics"
        )
    return InputNormalization(backbone_norm.mean, backbone_norm.std, scale, backbone_norm.name)


@dataclass(frozen=True)
class PreparedInput:
    """How an image became backbone input (recorded next to the features)."""

    bands: tuple[int, ...]  # 1-based indices in the file
    normalization: InputNormalization
    invalid: np.ndarray  # (H, W) True where nodata or non-finite pixels were filled
    nonfinite_pixels: int

    @property
    def invalid_pixels(self) -> int:
        return int(self.invalid.sum())


def default_bands(image: Image, n: int, expected: Sequence[str]) -> tuple[int, ...]:
    """Bands to use when none are given: only when the file's colour interpretation says they
    are exactly the ones the backbone expects, in order."""
    count = len(image.band_names)
    src = image.path
    want = ", ".join(expected)
    if count != n:
        example = ",".join(["1"] * n) if count == 1 else ",".join(str(i + 1) for i in range(n))
        raise InputImageError(
            f"{src}: has {count} band(s) but the backbone takes {n} ({want}); choose them with "
            f"bands, e.g. {example}"
        )
    interp = tuple("grey" if c == "gray" else c for c in image.colorinterp)
    if interp == tuple(expected):
        return tuple(range(1, n + 1))
    if sorted(interp) == sorted(expected) and len(set(expected)) == n:
        order = ",".join(str(interp.index(c) + 1) for c in expected)
        raise InputImageError(
            f"{src}: bands are stored as {', '.join(interp)}; the backbone takes {want}: pass "
            f"bands {order}"
        )
    raise InputImageError(
        f"{src}: the file does not say which bands are {want} (colour interpretation: "
        f"{', '.join(interp)}); choose them with bands, e.g. {','.join(map(str, range(1, n + 1)))}"
    )


def prepare_input(
    image: Image,
    backbone: Backbone,
    bands: Sequence[BandRef] | None = None,
    stats: BandStats | None = None,
    scale: float | None = None,
    fill_nonfinite: bool = False,
) -> tuple[Tensor, PreparedInput]:
    """Select and normalise bands; returns a ``(1, C, H, W)`` float32 tensor and what was done.

    Pixels the file marks as nodata in any chosen band, and non-finite pixels when
    ``fill_nonfinite``, are set to 0 after normalisation (the normalisation mean). Non-finite
    pixels the file does not mark as nodata are otherwise an error.
    """
    src = image.path
    n = backbone.in_chans
    expected = (
        backbone.normalization.bands
        if backbone.normalization
        else tuple(f"band{i}" for i in range(n))
    )
    if bands is None and stats is not None and stats.bands is not None:
        bands = stats.bands
    if bands is None:
        idx = [b - 1 for b in default_bands(image, n, expected)]
    else:
        if len(bands) != n:
            raise InputImageError(
                f"{src}: {len(bands)} band(s) chosen ({list(bands)}) but {backbone.name} takes "
                f"{n} ({', '.join(expected)})"
            )
        idx = resolve_band_indices(bands, image.band_names, src)
    h, w = image.shape
    if min(h, w) < backbone.patch_size:
        raise InputImageError(
            f"{src}: image is {w}x{h} pixels, smaller than one {backbone.patch_size}-pixel patch"
        )
    if stats is not None and scale is not None:
        raise InputImageError(
            f"{src}: give either per-band statistics (in the file's units) or a scale to [0, 1] "
            "for the backbone's own statistics, not both"
        )
    norm = choose_normalization(
        len(idx),
        stats,
        backbone.normalization,
        scale if scale is not None else (None if stats else image.default_scale),
        src,
    )
    raw = image.array[idx]
    marked = image.invalid[idx].any(axis=0) if image.invalid is not None else np.zeros((h, w), bool)
    nonfinite = ~np.isfinite(raw).all(axis=0) if raw.dtype.kind == "f" else np.zeros((h, w), bool)
    nonfinite &= ~marked  # NaN declared as the file's nodata is nodata, not an error
    n_nonfinite = int(nonfinite.sum())
    if n_nonfinite and not fill_nonfinite:
        raise InputImageError(
            f"{src}: {n_nonfinite} pixel(s) are NaN or infinite in the chosen bands; mark them "
            "as nodata in the file, or fill them with the band mean (fill_nonfinite)"
        )
    invalid = nonfinite | marked
    x = norm.apply(np.where(invalid[None], 0, raw))
    x[:, invalid] = 0.0
    info = PreparedInput(tuple(i + 1 for i in idx), norm, invalid, n_nonfinite)
    return torch.from_numpy(np.ascontiguousarray(x))[None], info


def extract_features(backbone: Backbone, x: Tensor) -> dict[str, object]:
    """Features of ``backbone.layers`` for ``x`` ``(B, C, H, W)`` (padded to the patch grid)."""
    with torch.inference_mode():
        out = backbone.forward_with_class_tokens(x)
    h, w = x.shape[-2:]
    p = backbone.patch_size
    return {
        "features": [m for m, _ in out],
        "class_tokens": [c for _, c in out],
        "layers": list(backbone.layers),
        "strides": backbone.strides,
        "image_size": [int(h), int(w)],
        "padded_size": [int(h + (-h % p)), int(w + (-w % p))],
    }


def pca_explained(fmap: Tensor, k: int = 3) -> list[float]:
    """The share of the variance of ``fmap`` ``(1, C, h, w)``'s patch features that each of its
    first ``k`` principal components explains (what :func:`pca_picture` shows)."""
    _, c, h, w = fmap.shape
    tokens = fmap[0].reshape(c, h * w).T.double()
    tokens = tokens - tokens.mean(0, keepdim=True)
    s = torch.linalg.svdvals(tokens) ** 2
    total = float(s.sum())
    return [float(v) / total if total > 0 else 0.0 for v in s[:k]]


def pca_picture(
    fmap: Tensor, image_size: Sequence[int], stride: int, invalid: np.ndarray | None = None
) -> np.ndarray:
    """First three principal components of ``fmap`` ``(1, C, h, w)`` as ``(H, W, 3)`` uint8.

    Each component is stretched between its 1st and 99th percentile. The map is upsampled
    bilinearly by ``stride`` onto the padded image and cropped to ``image_size``.
    """
    _, c, h, w = fmap.shape
    tokens = fmap[0].reshape(c, h * w).T.double()
    tokens = tokens - tokens.mean(0, keepdim=True)
    k = min(3, c, h * w)
    _, _, v = torch.linalg.svd(tokens, full_matrices=False)
    comps = (tokens @ v[:k].T).float()  # (h*w, k)
    if k < 3:
        comps = torch.cat([comps, comps.new_zeros(h * w, 3 - k)], 1)
    lo = torch.quantile(comps, 0.01, dim=0)
    hi = torch.quantile(comps, 0.99, dim=0)
    comps = ((comps - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    grid = comps.T.reshape(1, 3, h, w)
    up = F.interpolate(grid, scale_factor=stride, mode="bilinear", align_corners=False)
    rgb = crop_to_image(up, (int(image_size[0]), int(image_size[1])))[0]
    out = (rgb.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    if invalid is not None:
        out[invalid] = 0
    return out
