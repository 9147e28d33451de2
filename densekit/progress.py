"""Progress that reads well where it lands: a live bar in a terminal, plain lines elsewhere.

Under ``nohup``, a job system or a pipe, a redrawn bar leaves nothing readable (or one line of
carriage returns), so outside a terminal progress is written as one plain line at most every
``DENSEKIT_PROGRESS_SECONDS`` seconds (default 20), e.g.::

    densekit tile: scene.tif 120/480 tiles (25%), 3.1 tiles/s, elapsed 0:00:39, ETA 0:01:56

A background thread repeats the last state when the work itself is slower than the interval,
so a log never stays silent longer than that.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import Any, TextIO

from densekit.errors import DensekitError

DEFAULT_SECONDS = 20.0


def interval_seconds() -> float:
    """The seconds between plain progress lines (``DENSEKIT_PROGRESS_SECONDS``, default 20)."""
    text = os.environ.get("DENSEKIT_PROGRESS_SECONDS", "")
    if not text:
        return DEFAULT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise DensekitError(f"DENSEKIT_PROGRESS_SECONDS={text!r}: give a number of seconds > 0")
    return value


def in_terminal() -> bool:
    """Whether both stdout and stderr are terminals (a live bar can be redrawn there)."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def clock(seconds: float) -> str:
    """``3725.2`` -> ``"1:02:05"``; unknown (inf, nan) -> ``"?"``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Heartbeat:
    """Calls ``say()`` every ``interval`` seconds in a daemon thread unless :meth:`beat` was
    called more recently: a log gets a line at least every ``interval`` seconds."""

    def __init__(self, say: Any, interval: float) -> None:
        self.say = say
        self.interval = interval
        self.last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.interval

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, daemon=True, name="progress")
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(min(self.interval, 1.0) / 2):
            if self.due():
                self.beat()
                self.say()


class PlainProgress:
    """A counter that writes plain progress lines (the subset of ``tqdm`` densekit uses:
    ``update``, ``close``, ``write``, a context manager).

    Args:
        total: the count at the end (None: unknown, no ETA).
        desc: what is counted, e.g. the file name.
        unit: the unit's name (``tile``, ``slice``).
        prefix: the start of every line, e.g. ``"densekit tile: "``.
        initial: the count already done (a resumed run).
        stream: where the lines go (default stderr).
    """

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        unit: str = "it",
        prefix: str = "",
        initial: int = 0,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.prefix = total, desc, unit, prefix
        self.n = self.initial = initial
        self.stream = stream
        self.start = time.monotonic()
        self._lock = threading.Lock()
        self.heartbeat = Heartbeat(self._say, interval_seconds())
        self.heartbeat.start()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total}" if self.total else str(self.n)
        parts = [f"{self.desc} {count} {self.unit}s".strip()]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}s/s")
        parts.append(f"elapsed {clock(elapsed)}")
        if self.total:
            left = (self.total - self.n) / rate if rate > 0 else math.inf
            parts.append(f"ETA {clock(left)}")
        return self.prefix + ", ".join(parts)

    def _say(self) -> None:
        with self._lock:  # the heartbeat's thread and the counting one: whole lines only
            stream = self.stream or sys.stderr
            stream.write(self.line() + "\n")
            stream.flush()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.heartbeat.due() or (self.total is not None and self.n >= self.total):
            self.heartbeat.beat()
            self._say()

    def write(self, text: str, file: TextIO | None = None) -> None:
        print(text, file=file or self.stream or sys.stderr, flush=True)

    def close(self) -> None:
        self.heartbeat.stop()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(
    total: int | None,
    desc: str = "",
    unit: str = "it",
    prefix: str = "",
    initial: int = 0,
    disable: bool = False,
) -> Any:
    """A ``tqdm`` bar in a terminal, else a :class:`PlainProgress`; None when ``disable``."""
    if disable:
        return None
    if in_terminal():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True)
    return PlainProgress(total, desc, unit, prefix, initial)
