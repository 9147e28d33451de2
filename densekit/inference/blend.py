"""Blending tiles (the merge role of a tiled run): the smooth weights, and a strip's running
sums held a column block at a time.

Each tile's output is multiplied by ``w(i) w(j)`` with ``w(i) = sin^2(pi (i + 0.5) / tile)`` (a
Hann window shifted half a pixel so it is never zero) and summed; the result is the sum divided
by the summed weights. Where tiles overlap, each one's borders weigh least, so no seam shows; a
model that is exactly translation-equivariant gives the untiled result.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from densekit.inference.plan import BLOCK, Plan

FINISH_COLUMNS = 2048  # columns finished at a time (rounded to whole blocks of the strip files)

# ``emit(c0, c1, sums (K, T, c1 - c0), valid (T, c1 - c0))``: padded columns ``[c0, c1)`` of the
# strip have received every tile of the strip; the views are only valid during the call.
Emit = Callable[[int, int, np.ndarray, np.ndarray], None]


def hann_window(size: int) -> torch.Tensor:
    """``w(i) = sin^2(pi (i + 0.5) / size)``, never 0, largest in the middle."""
    i = torch.arange(size, dtype=torch.float64)
    return torch.sin(math.pi * (i + 0.5) / size).pow(2).float()


def weight_tables(plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """Summed weights per row and per column of the raster (float32).

    The weights are separable and the tiles form a full grid, so the summed weight at ``(r, c)``
    is (sum over tile rows covering ``r``) x (sum over tile columns covering ``c``).
    """
    t = plan.tile
    w1 = hann_window(t)
    rows = torch.zeros(plan.rows[-1] + t)
    for r in plan.rows:
        rows[r : r + t] += w1
    cols = torch.zeros(plan.cols[-1] + t)
    for c in plan.cols:
        cols[c : c + t] += w1
    return rows.numpy(), cols[: plan.width].numpy()


class StripSums:
    """The weighted sums of one strip of tiles, kept only for the columns not yet finished.

    With tile ``T``, step ``S`` and overlap ``O = T - S < S``, strip ``s`` covers the rows
    ``[r_s, r_s + T)``. Its first ``S`` rows receive no tile of a later strip; its last ``O``
    rows also receive the next strip's tiles, so their sums are kept in ``carry (K, O, W)`` and
    start the next strip's sums. Along a strip the tiles come left to right, so once the tile at
    column ``c`` arrives every column ``< c`` has all of the strip's tiles: such columns are
    handed to ``emit`` a block at a time (a block starts on a multiple of ``BLOCK``) and their
    last ``O`` rows go to ``carry``. The sums ``acc (K, T, FINISH_COLUMNS + T)`` thus cover a
    window of columns that slides along the strip.

    Memory: ``(K + 1) (T (FINISH_COLUMNS + T) + O W)`` floats (the validity as bools), bounded
    by the tile size except for the thin overlap band. Every pixel receives its tiles in the
    same order (strip by strip, left to right) as with sums over whole strips, so the result
    has the same bits whatever ``FINISH_COLUMNS`` is.

    The sums are NumPy arrays, not tensors: these small element-wise steps run between forward
    passes, and torch would spread each over its intra-op threads, whose start and join cost
    more than the arithmetic (and much more when another thread, such as the reader, or another
    process holds a core). Float32 products and sums round the same in both.
    """

    def __init__(self, plan: Plan, channels: int) -> None:
        t = plan.tile
        self.tile = t
        self.step = plan.step
        self.width = plan.cols[-1] + t  # padded: the last tile may reach past the raster
        self.span = min(max(FINISH_COLUMNS // BLOCK, 1) * BLOCK + t, self.width)
        self.window = (hann_window(t)[:, None] * hann_window(t)[None, :]).numpy()
        self.acc = np.zeros((channels, t, self.span), np.float32)
        self.valid = np.zeros((t, self.span), bool)
        overlap = t - plan.step
        self.carry = np.zeros((channels, overlap, self.width), np.float32)
        self.carry_valid = np.zeros((overlap, self.width), bool)
        self._product = np.empty((channels, t, t), np.float32)
        self.x0 = 0  # raster column of ``acc[:, :, 0]``
        self.emit: Emit | None = None

    def start(self, emit: Emit) -> None:
        """Begin a strip whose finished columns go to ``emit``."""
        self.x0 = 0
        self.emit = emit
        self._load(0, self.span)

    def add(self, c: int, out: np.ndarray, ok: np.ndarray) -> None:
        """Add the tile at column ``c``: outputs ``(K, T, T)`` float32, valid pixels ``(T, T)``."""
        t = self.tile
        if c + t > self.x0 + self.span:  # columns < c are complete: make room
            self._finish(c // BLOCK * BLOCK)
        j = c - self.x0
        product = np.multiply(out, self.window, out=self._product)
        self.acc[:, :, j : j + t] += product
        self.valid[:, j : j + t] |= ok

    def end(self) -> None:
        """Finish the strip's remaining columns."""
        self._emit(self.width)
        self.emit = None

    def _emit(self, e: int) -> None:
        """Hand columns ``[x0, e)`` to ``emit`` and keep their overlap rows for the next strip."""
        if self.emit is None:
            raise RuntimeError("StripSums: start() a strip before adding tiles")
        m = e - self.x0
        self.emit(self.x0, e, self.acc[:, :, :m], self.valid[:, :m])
        self.carry[:, :, self.x0 : e] = self.acc[:, self.step :, :m]
        self.carry_valid[:, self.x0 : e] = self.valid[self.step :, :m]

    def _finish(self, e: int) -> None:
        """Emit columns ``[x0, e)`` and slide the window to start at ``e``."""
        self._emit(e)
        m = e - self.x0
        keep = self.span - m
        self.acc[:, :, :keep] = self.acc[:, :, m:].copy()
        self.valid[:, :keep] = self.valid[:, m:].copy()
        self.x0 = e
        self._load(e + keep, e + self.span)

    def _load(self, lo: int, hi: int) -> None:
        """Columns ``[lo, hi)`` enter the window: zero, plus the previous strip's overlap rows."""
        a, b = lo - self.x0, hi - self.x0
        self.acc[:, :, a:b] = 0
        self.valid[:, a:b] = False
        n = max(0, min(hi, self.width) - lo)
        o = self.carry.shape[1]
        self.acc[:, :o, a : a + n] = self.carry[:, :, lo : lo + n]
        self.valid[:o, a : a + n] = self.carry_valid[:, lo : lo + n]
