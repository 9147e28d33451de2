"""Timing contenders in alternation, in one process: wall and process CPU seconds.

Timing one contender after another in wall time lets the machine's load at each moment decide
the ratio (under load, ``benchmarks/tiling.py`` once printed ratios the CPU time did not show).
Here every round calls each contender once, the order rotated from round to round, and both the
wall time and the process CPU time (all threads) of each call are kept; a benchmark prints the
median of each. Run at one thread (``torch.set_num_threads(1)``), CPU seconds are the figure to
compare; wall seconds show what a user waits.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Median seconds per call of one contender over the rounds."""

    wall: float
    cpu: float


def alternate(
    contenders: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    sync: Callable[[], object] = lambda: None,
) -> dict[str, Timing]:
    """Time each of ``contenders`` ``rounds`` times, alternating, after ``warmup`` calls each.

    Args:
        contenders: name -> a call to time.
        rounds: calls timed per contender (each round calls every contender once, the order
            rotated by one each round).
        warmup: untimed calls per contender first.
        sync: called before and after each timed call (e.g. ``torch.cuda.synchronize``).
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            contenders[name]()
            sync()
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    return {
        name: Timing(statistics.median(walls[name]), statistics.median(cpus[name]))
        for name in names
    }
