"""Pictures for people: an image stretched for display, classes overlaid in their map colours,
an error map (true positive, false positive, false negative), and side-by-side panels with
legends as one PNG (matplotlib without a display, written atomically)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from densekit.io import atomic_outputs


def stretch(a: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """A grey image stretched between its 2nd and 98th percentiles to [0, 1]."""
    values = a[valid] if valid is not None else a.ravel()
    lo, hi = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
    return np.clip((a.astype(np.float64) - lo) / max(hi - lo, 1e-9), 0, 1)


Legend = Sequence[tuple[str, tuple[int, int, int]]]

# the error map's colours: true positive, false positive, false negative, true negative, nodata
ERROR_COLOURS: dict[str, tuple[int, int, int]] = {
    "true positive": (255, 255, 255),
    "false positive": (255, 0, 255),
    "false negative": (0, 200, 255),
    "true negative": (60, 60, 60),
    "no label": (0, 0, 0),
}


def overlay(
    image: np.ndarray,
    classes: np.ndarray,
    colours: Mapping[int, tuple[int, ...]],
    alpha: float = 0.55,
    skip: Sequence[int] = (0,),
) -> np.ndarray:
    """``classes`` ``(H, W)`` painted over ``image`` (``(H, W, 3)`` or ``(H, W)`` in [0, 1]) in
    ``colours`` (class -> RGB or RGBA 0-255, e.g. a GeoTIFF's colour table), with opacity
    ``alpha``; classes in ``skip`` (the background) and transparent colours are not painted.
    Returns ``(H, W, 3)`` in [0, 1]."""
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image.copy()
    rgb = rgb.astype(np.float64)
    for value, colour in colours.items():
        if value in skip or (len(colour) > 3 and colour[3] == 0):
            continue
        where = classes == value
        paint = np.asarray(colour[:3], dtype=np.float64) / 255
        rgb[where] = (1 - alpha) * rgb[where] + alpha * paint
    return rgb


def error_map(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The positive class's errors as ``(H, W, 3)`` in [0, 1], coloured as
    :data:`ERROR_COLOURS` says (``pred``, ``truth``: bool; ``valid``: the labelled pixels)."""
    out = np.zeros((*pred.shape, 3))
    cases = {
        "true positive": pred & truth,
        "false positive": pred & ~truth,
        "false negative": ~pred & truth,
        "true negative": ~pred & ~truth,
    }
    for name, where in cases.items():
        out[where & valid] = np.asarray(ERROR_COLOURS[name]) / 255
    return out


def panels(
    path: Path,
    items: list[tuple[str, np.ndarray, str | None]],
    title: str,
    mark: int | None,
    legends: Sequence[Legend | None] | None = None,
) -> None:
    """``items`` (name, 2D array with a colour map, or an RGB array in [0, 1] with None) side
    by side as one PNG at ``path``; ``mark``: a column drawn as a dashed line on each (e.g.
    where the test split starts); ``legends``: per panel, (label, RGB 0-255) entries drawn
    below it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 5.0), squeeze=False)
    legends = legends or [None] * len(items)
    for ax, (name, a, cmap), legend in zip(axes[0], items, legends, strict=True):
        ax.imshow(a, cmap=cmap, interpolation="nearest", vmin=0, vmax=1 if cmap else None)
        if mark is not None:
            ax.axvline(mark, color="yellow", lw=1, ls="--")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
        if legend:
            handles = [
                Patch(facecolor=(c[0] / 255, c[1] / 255, c[2] / 255), edgecolor="0.5", label=label)
                for label, c in legend
            ]
            ax.legend(
                handles=handles,
                loc="upper center",
                bbox_to_anchor=(0.5, -0.01),
                ncol=min(len(handles), 3),
                fontsize=8,
                frameon=False,
            )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()

    def write(tmp: Path) -> None:
        fig.savefig(tmp, dpi=100, format="png")

    atomic_outputs({path: write})
    plt.close(fig)
