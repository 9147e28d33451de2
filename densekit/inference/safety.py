"""What keeps a tiled run from damaging files: outputs that are never its inputs, one run per
output at a time (a lock), and a resumed run that continues only on unchanged inputs.

* :func:`check_not_an_input`: the map and the probabilities path (``<output stem>_probs.tif``)
  must not be an input (the same file by path, link or inode), or the run would replace its
  own input with its result.
* :func:`output_lock`: an exclusive ``flock`` on ``.<output name>.lock`` beside the output,
  taken before the partial run's folder is touched; a second run on the same output is refused
  while the first lives (the kernel drops the lock when a process dies, so a killed run never
  blocks the next one).
* :func:`input_fingerprint`: size, modification time and the sha256 of the first strip's
  pixels of each input, recorded with the partial run; ``resume`` refuses when they differ.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from densekit.data.grids import open_raster
from densekit.errors import DensekitError, InputImageError

# columns read at a time while hashing the first strip (bounds the memory on wide rasters)
HASH_COLUMNS = 4096


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one file (resolved paths, or the same inode)."""
    a, b = Path(a), Path(b)
    if a.expanduser().resolve() == b.expanduser().resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_not_an_input(outputs: dict[str, Path], inputs: dict[str, str | None]) -> None:
    """Refuse an output that is one of the inputs (``outputs`` / ``inputs``: name -> path)."""
    for out_name, out in outputs.items():
        for in_name, path in inputs.items():
            if path is not None and same_file(out, path):
                raise DensekitError(
                    f"{out_name} {out} is the {in_name} {path}: the run would write over its "
                    "input; give another output path"
                )


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``output`` for the block; refuse if another run holds it."""
    path = output.with_name(f".{output.name}.lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = _read_pid(path)
            raise DensekitError(
                f"output {output}: another densekit tile run{holder} is writing it; wait for "
                "it to end or give another output path"
            ) from None
        # the holder before us may have removed the file after we opened it: lock the file
        # that is at the path now
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def _read_pid(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isdigit() else ""


def input_fingerprint(path: str, rows: int, band_idx: list[int] | None) -> dict[str, Any]:
    """Size, modification time (ns) and the sha256 of the first ``rows`` rows of the bands
    read (all columns, read in blocks of :data:`HASH_COLUMNS`)."""
    p = Path(path)
    stat = p.stat() if p.is_file() else None
    digest = hashlib.sha256()
    try:
        with open_raster(path) as src:
            bands = None if band_idx is None else [i + 1 for i in band_idx]
            n = min(rows, src.height)
            for c0 in range(0, src.width, HASH_COLUMNS):
                w = min(HASH_COLUMNS, src.width - c0)
                window = ((0, n), (c0, c0 + w))
                block = src.read(bands, window=window) if bands else src.read(window=window)
                digest.update(block.tobytes())
    except OSError as e:
        raise InputImageError(f"input {path}: reading its first rows failed ({e})") from None
    return {
        "size": None if stat is None else stat.st_size,
        "mtime_ns": None if stat is None else stat.st_mtime_ns,
        "first_strip_sha256": digest.hexdigest(),
    }
