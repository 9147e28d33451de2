"""The benchmark's results: ``results.csv`` (one row per run), ``results.md`` (mean +- std over
seeds per backbone, head and label amount) and ``results.png`` (the card's metric against the
label fraction, log x, one line per backbone and head, and a dashed line for the trivial
predictor)."""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from densekit.benchmark.card import Card

LEADING = [
    "run_id",
    "card",
    "backbone",
    "weights",
    "head",
    "amount",
    "seed",
    "labelled_windows",
    "train_windows",
    "selected_head",
    "fit_s",
    "test_s",
    "trivial",
]


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite values."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def summary(card: Card, rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict]:
    """``(backbone, head) -> {amount: [metric per seed]}`` in card order."""
    table: dict[tuple[str, str], dict[Any, list[float]]] = {}
    for row in rows:
        key = (row["backbone"], row["head"])
        value = row["metrics"].get(card.metric, math.nan)
        table.setdefault(key, {}).setdefault(row["amount"], []).append(float(value))
    return table


def trivial_score(rows: Sequence[dict[str, Any]]) -> float | None:
    """The trivial predictor's score on the card's metric (one class everywhere, the best
    class; every run is tested on the same pixels, so the rows agree), None when unknown
    (depth metrics, rows written before densekit recorded it)."""
    values = [float(r["trivial"]) for r in rows if r.get("trivial") is not None]
    return statistics.fmean(values) if values else None


def write_report(card: Card, out: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write results.csv, results.md and results.png for ``rows``."""
    metric_names = sorted({k for r in rows for k in r["metrics"]})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(LEADING + metric_names + ["config"])
    for r in rows:
        metrics = [r["metrics"].get(k, "") for k in metric_names]
        writer.writerow([r.get(k) for k in LEADING] + metrics + [r["config"]])
    _atomic(out / "results.csv", buffer.getvalue().encode())
    _atomic(out / "results.md", markdown(card, rows).encode())
    _atomic(out / "results.png", plot(card, rows))


def _amount_label(card: Card, amount: Any) -> str:
    return f"{amount} labelled" if card.by_count else f"{float(amount) * 100:g} %"


def markdown(card: Card, rows: Sequence[dict[str, Any]]) -> str:
    table = summary(card, rows)
    amounts = [a for a in card.amounts if any(a in v for v in table.values())]
    seeds = len(card.spec["seeds"])
    lines = [
        f"# {card.name}: test {card.metric}, mean ± std over seeds",
        "",
        f"Card `{card.path}`; {seeds} seed(s) per cell (n = runs finished); label amounts "
        f"{'as counts of labelled windows' if card.by_count else 'as fractions of the labelled '}"
        f"{'' if card.by_count else 'training windows'}; subsets nested per seed.",
        "",
        "| backbone | head | " + " | ".join(_header(card, a, rows) for a in amounts) + " |",
        "|---|---|" + "---|" * len(amounts),
    ]
    for (backbone, head), by_amount in table.items():
        cells = []
        for a in amounts:
            values = [v for v in by_amount.get(a, []) if math.isfinite(v)]
            mean, std = mean_std(values)
            spread = f"{std:.4f}" if len(values) > 1 else "–"
            cells.append(f"{mean:.4f} ± {spread} (n={len(values)})" if values else "")
        lines.append(f"| {backbone} | {head} | " + " | ".join(cells) + " |")
    grids = sorted({r["head"] for r in rows if r.get("selected_head")})
    if grids:
        lines += [
            "",
            f"Heads {', '.join(grids)} train a grid of linear heads on one pass and report the "
            f"one with the best validation {card.metric} (column `selected_head` of results.csv);"
            " the other heads and the baselines train once with the card's settings.",
        ]
    trivial = trivial_score(rows)
    if trivial is not None:
        lines += [
            "",
            f"Trivial predictor (one class everywhere, the best one) on the same test pixels: "
            f"{card.metric} {trivial:.4f}; a row below it has learnt nothing usable.",
        ]
    fit = [r["fit_s"] for r in rows]
    lines += ["", f"{len(rows)} runs, training time {sum(fit):.0f} s in all.", ""]
    return "\n".join(lines)


def _header(card: Card, amount: Any, rows: Sequence[dict[str, Any]]) -> str:
    """The column of a label amount, with the training windows it came to."""
    counts = sorted({r["train_windows"] for r in rows if r["amount"] == amount} - {None})
    windows = "/".join(str(c) for c in counts)
    return (
        f"{_amount_label(card, amount)} ({windows} windows)"
        if windows
        else _amount_label(card, amount)
    )


def plot(card: Card, rows: Sequence[dict[str, Any]]) -> bytes:
    """The PNG: metric against label amount (log x), mean with a +-std band, per line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for (backbone, head), by_amount in summary(card, rows).items():
        amounts = [a for a in card.amounts if a in by_amount]
        xs = [float(a) * (1 if card.by_count else 100) for a in amounts]
        stats = [mean_std(by_amount[a]) for a in amounts]
        means = [m for m, _ in stats]
        label = head if backbone == "none" else f"{backbone} / {head}"
        (line,) = ax.plot(xs, means, marker="o", label=label)
        ax.fill_between(
            xs,
            [m - s for m, s in stats],
            [m + s for m, s in stats],
            color=line.get_color(),
            alpha=0.15,
        )
    trivial = trivial_score(rows)
    if trivial is not None:
        ax.axhline(trivial, color="0.4", linestyle="--", label=f"trivial predictor ({trivial:.3f})")
    ax.set_xscale("log")
    ticks = [float(a) * (1 if card.by_count else 100) for a in card.amounts]
    ax.set_xticks(ticks, [_amount_label(card, a) for a in card.amounts])
    ax.minorticks_off()
    ax.set_xlabel("labelled training windows" if card.by_count else "labelled fraction (%)")
    ax.set_ylabel(f"test {card.metric}")
    ax.set_title(card.name)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
