"""Pictures for people: a grey image stretched for display, and side-by-side panels as one PNG
(matplotlib without a display, written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from densekit.io import atomic_outputs


def stretch(a: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """A grey image stretched between its 2nd and 98th percentiles to [0, 1]."""
    values = a[valid] if valid is not None else a.ravel()
    lo, hi = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
    return np.clip((a.astype(np.float64) - lo) / max(hi - lo, 1e-9), 0, 1)


def panels(
    path: Path, items: list[tuple[str, np.ndarray, str | None]], title: str, mark: int | None
) -> None:
    """``items`` (name, 2D array, colour map) side by side as one PNG at ``path``; ``mark``: a
    column drawn as a dashed line on each (e.g. where the test split starts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 4.6))
    for ax, (name, a, cmap) in zip(axes, items, strict=True):
        ax.imshow(a, cmap=cmap, interpolation="nearest", vmin=0, vmax=1 if cmap else None)
        if mark is not None:
            ax.axvline(mark, color="yellow", lw=1, ls="--")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()

    def write(tmp: Path) -> None:
        fig.savefig(tmp, dpi=100, format="png")

    atomic_outputs({path: write})
    plt.close(fig)
