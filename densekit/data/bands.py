"""Choosing and ordering input bands, and per-band statistics files.

An RGB-trained backbone must see red, green and blue, in that order, scaled as in training. For
a multispectral raster the user says which bands play those roles, by 1-based index (as GDAL
and rasterio count) or by band description::

    bands: [B4, B3, B2]      # Sentinel-2 red, green, blue by name
    bands: [4, 3, 2]         # the same by index
    bands: [1, 1, 1]         # a grey image repeated on the three channels (CT, X-ray)

Per-band statistics in the file's own units (``densekit stats`` writes them) are read by
:class:`BandStats`; how a backbone's input is normalised from them, or from its own statistics,
is :func:`densekit.features.choose_normalization`. A band count that does not match is an error
naming both counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from densekit.errors import DensekitError, InputImageError

BandRef = int | str


def parse_bands(text: str | None) -> tuple[BandRef, ...] | None:
    """``"4,3,2"`` -> ``(4, 3, 2)``; ``"B4,B3,B2"`` -> names; None stays None."""
    if text is None or text == "":
        return None
    out: list[BandRef] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise DensekitError(f"empty band in --bands {text!r}")
        out.append(int(part) if part.lstrip("-").isdigit() else part)
    return tuple(out)


def resolve_band_indices(
    bands: Sequence[BandRef], band_names: Sequence[str | None], source: str
) -> list[int]:
    """0-based indices of ``bands`` (1-based indices or names) in a file with ``band_names``."""
    count = len(band_names)
    out = []
    for b in bands:
        if isinstance(b, int):
            if not 1 <= b <= count:
                raise InputImageError(
                    f"{source}: band {b} does not exist; the file has {count} band(s), "
                    f"numbered 1..{count}"
                )
            out.append(b - 1)
        else:
            matches = [i for i, n in enumerate(band_names) if n == b]
            if len(matches) != 1:
                named = [n for n in band_names if n]
                what = "no band" if not matches else f"{len(matches)} bands"
                raise InputImageError(
                    f"{source}: {what} named {b!r}; band names in the file: "
                    f"{named or 'none (use 1-based indices)'}"
                )
            out.append(matches[0])
    return out


@dataclass(frozen=True)
class BandStats:
    """Per-band statistics in the file's own units, as ``densekit stats`` writes them."""

    bands: tuple[BandRef, ...] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_yaml(cls, path: str | Path) -> BandStats:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise DensekitError(f"{path}: cannot read statistics ({e})") from None
        if isinstance(data, dict) and "model" in data:  # a `densekit stats` config fragment
            data = (data.get("model") or {}).get("init_args") or {}
        if not isinstance(data, dict) or "mean" not in data or "std" not in data:
            raise DensekitError(f"{path}: statistics need 'mean' and 'std' lists (and 'bands')")
        try:
            mean = tuple(float(v) for v in data["mean"])
            std = tuple(float(v) for v in data["std"])
        except (TypeError, ValueError):
            raise DensekitError(
                f"{path}: 'mean' and 'std' must be lists of numbers, got {data['mean']!r} and "
                f"{data['std']!r}"
            ) from None
        if len(mean) != len(std):
            raise DensekitError(f"{path}: {len(mean)} means but {len(std)} stds")
        if any(s <= 0 for s in std):
            raise DensekitError(f"{path}: std values must be > 0, got {list(std)}")
        bands = data.get("bands")
        if bands is not None and (
            not isinstance(bands, list) or not all(isinstance(b, int | str) for b in bands)
        ):
            raise DensekitError(f"{path}: 'bands' must be a list of band indices or names")
        return cls(tuple(bands) if bands is not None else None, mean, std)
