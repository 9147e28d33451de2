"""What a raster's bands are, as far as a model cares: how many, their data type (and so the
range of values they can hold) and their names.

A checkpoint records the :class:`BandLayout` of the rasters it was trained on; ``densekit tile``
compares the layout of each input with it and refuses one that differs (an 8-bit RGB raster
given to a model trained on 16-bit panchromatic data would otherwise run, its band 1 read as pan
and pan statistics applied)::

    BandLayout.of("pan.tif").describe()
    # '1 band, uint16 (0..65535), names: PAN'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from densekit.data.datasets import band_table
from densekit.data.grids import open_raster
from densekit.errors import DensekitError


@dataclass(frozen=True)
class BandLayout:
    """The bands of a raster (one file, or a folder of single-band files).

    Args:
        count: number of bands.
        dtype: the bands' data type (``uint8``, ``int16``, ``float32``, ...); bands of a folder
            with different types are joined by ``/`` (``uint16/float32``).
        names: each band's description (None where the band has none).
    """

    count: int
    dtype: str
    names: tuple[str | None, ...]

    @classmethod
    def of(cls, path: str) -> BandLayout:
        """The layout of the raster (or folder of band files) at ``path``."""
        table = band_table(path)
        dtypes: dict[str, None] = {}  # the types in band order, each once
        for file in dict.fromkeys(p for p, _, _ in table):
            with open_raster(file) as src:
                dtypes.update(dict.fromkeys(src.dtypes))
        return cls(len(table), "/".join(dtypes), tuple(name or None for _, _, name in table))

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "dtype": self.dtype, "names": list(self.names)}

    @classmethod
    def from_dict(cls, record: dict[str, Any], where: str) -> BandLayout:
        """A layout recorded by :meth:`to_dict`; ``where`` names the record in errors."""
        try:
            names = tuple(None if n is None else str(n) for n in record["names"])
            return cls(int(record["count"]), str(record["dtype"]), names)
        except (KeyError, TypeError, ValueError):
            raise DensekitError(
                f"{where}: the record of the training rasters is not readable: {record!r} "
                "(expected count, dtype and names)"
            ) from None

    def value_range(self) -> str:
        """The values the data type holds, e.g. ``0..255``; empty for floats or mixed types."""
        if "/" in self.dtype:
            return ""
        try:
            info = np.iinfo(np.dtype(self.dtype))
        except (TypeError, ValueError):
            return ""
        return f"{info.min}..{info.max}"

    def describe(self) -> str:
        """``3 bands, uint8 (0..255), no band names``."""
        bands = f"{self.count} band{'s' if self.count != 1 else ''}"
        span = self.value_range()
        dtype = f"{self.dtype} ({span})" if span else self.dtype
        if any(self.names):
            names = "names: " + ", ".join(n or "(none)" for n in self.names)
        else:
            names = "no band names"
        return f"{bands}, {dtype}, {names}"

    def differences(self, other: BandLayout) -> list[str]:
        """What differs between this layout and ``other``: ``band count``, ``data type``,
        ``band names`` (empty if they agree)."""
        out = []
        if self.count != other.count:
            out.append("band count")
        if self.dtype != other.dtype:
            out.append("data type")
        if self.names != other.names and (any(self.names) or any(other.names)):
            out.append("band names")  # unnamed bands of another count: the count says it
        return out
