"""Per-band statistics in one streaming pass with bounded memory (``densekit stats``).

Each band of each file is read in blocks of rows; nodata pixels (per band) and non-finite values
are left out. Mean and standard deviation are merged block by block (Chan et al.'s parallel
update, in float64). Percentiles are exact for integer bands of at most 16 bits (a histogram of
every value) and otherwise come from a uniform sample of at most ``sample_size`` values per band
(bottom-k: the values with the smallest random keys). Memory is one block plus the histogram or
the sample, whatever the raster size. A band must have one data type in every file (mixed types
are an error naming both files, whatever their order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rasterio.windows import Window

from densekit.data.bands import BandRef, resolve_band_indices
from densekit.data.datasets import band_table
from densekit.data.grids import open_raster
from densekit.errors import DensekitError

PERCENTILES = (1.0, 2.0, 50.0, 98.0, 99.0)


@dataclass
class _Accumulator:
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    hist: np.ndarray | None = None
    offset: int = 0
    sample: list[np.ndarray] = field(default_factory=list)
    keys: list[np.ndarray] = field(default_factory=list)
    dtype: np.dtype | None = None  # the band's type in the first file, ``origin``
    origin: str = ""

    def add(self, values: np.ndarray, rng: np.random.Generator, sample_size: int) -> None:
        n = values.size
        if n == 0:
            return
        v = values.astype(np.float64)
        mean_b, m2_b = float(v.mean()), float(((v - v.mean()) ** 2).sum())
        delta = mean_b - self.mean
        total = self.count + n
        self.mean += delta * n / total
        self.m2 += m2_b + delta**2 * self.count * n / total
        self.count = total
        if self.hist is not None:
            self.hist += np.bincount(
                values.astype(np.int64) - self.offset, minlength=self.hist.size
            )
            return
        # bottom-k sampling: every value gets a uniform random key; the sample_size values with
        # the smallest keys so far are a uniform sample of everything seen
        keys = rng.random(n)
        pool = np.concatenate([*self.sample, values.astype(np.float64)])
        pool_keys = np.concatenate([*self.keys, keys])
        if pool.size > sample_size:
            keep = np.argpartition(pool_keys, sample_size - 1)[:sample_size]
            pool, pool_keys = pool[keep], pool_keys[keep]
        self.sample, self.keys = [pool], [pool_keys]

    def percentiles(self, qs: Sequence[float]) -> list[float]:
        if self.count == 0:
            return [float("nan")] * len(qs)
        if self.hist is not None:
            cdf = np.cumsum(self.hist) / self.hist.sum()
            return [float(np.searchsorted(cdf, q / 100) + self.offset) for q in qs]
        return [float(v) for v in np.percentile(np.concatenate(self.sample), qs)]


def band_statistics(
    specs: Sequence[str],
    bands: Sequence[BandRef] | None = None,
    block_rows: int = 512,
    sample_size: int = 1_000_000,
    seed: int = 0,
) -> dict:
    """Statistics of the chosen bands over all ``specs`` (files or folders of band files)."""
    if not specs:
        raise DensekitError("no files given")
    rng = np.random.default_rng(seed)
    names: list[str | int] | None = None
    accs: list[_Accumulator] = []
    for spec in specs:
        table = band_table(spec)
        idx = (
            list(range(len(table)))
            if bands is None
            else resolve_band_indices(bands, [n for _, _, n in table], spec)
        )
        chosen: list[str | int] = [table[i][2] or i + 1 for i in idx]
        if names is None:
            names = chosen
            accs = [_Accumulator() for _ in idx]
        elif len(chosen) != len(names):
            raise DensekitError(f"{spec}: {len(chosen)} bands, the first file gave {len(names)}")
        for acc, i in zip(accs, idx, strict=True):
            path, band, _ = table[i]
            with open_raster(path) as src:
                dtype = np.dtype(src.dtypes[band - 1])
                if acc.dtype is None:
                    acc.dtype, acc.origin = dtype, f"band {band} of {path}"
                    if dtype.kind in "iu" and dtype.itemsize <= 2:
                        info = np.iinfo(dtype)
                        acc.hist = np.zeros(int(info.max) - int(info.min) + 1, np.int64)
                        acc.offset = int(info.min)
                elif dtype != acc.dtype:
                    raise DensekitError(
                        f"{path}: band {band} is {dtype}, unlike {acc.origin} ({acc.dtype}), "
                        "the first file: statistics need one data type per band in every file"
                    )
                for row in range(0, src.height, block_rows):
                    win = Window(0, row, src.width, min(block_rows, src.height - row))
                    data = src.read(band, window=win)
                    valid = src.read_masks(band, window=win) > 0
                    if data.dtype.kind == "f":
                        valid &= np.isfinite(data)
                    acc.add(data[valid], rng, sample_size)
    if names is None or any(a.count == 0 for a in accs):
        raise DensekitError("no valid pixels in at least one band (all nodata?)")
    return {
        "bands": names,
        "mean": [a.mean for a in accs],
        "std": [float(np.sqrt(a.m2 / a.count)) for a in accs],
        "count": [a.count for a in accs],
        "percentiles": {f"p{q:g}": [a.percentiles([q])[0] for a in accs] for q in PERCENTILES},
        "files": list(specs),
    }
