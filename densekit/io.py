"""Writing outputs all-or-nothing: each to a temporary file beside it, then moved into place."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from densekit.errors import is_full_disk


def atomic_outputs(writers: dict[Path, Callable[[Path], object]]) -> None:
    """Run each ``writer(tmp_path)``; only when all succeeded move the files to their paths.

    On any failure the temporary files are removed and nothing appears at the output paths (a
    file already there from an earlier run stays as it was). A failed write (no space left,
    no permission, ...) is raised as an ``OSError`` naming the output path, not the temporary
    one.
    """
    tmps: dict[Path, Path] = {}
    try:
        for path, write in writers.items():
            # Keep the real suffix: some writers pick the format from it.
            tmp = temporary_path(path)
            tmps[path] = tmp
            try:
                write(tmp)
            except OSError as e:
                raise as_output_error(e, path) from e
        for path, tmp in tmps.items():
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise as_output_error(e, path) from e
    finally:
        for tmp in tmps.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def temporary_path(path: Path) -> Path:
    """The hidden temporary name of ``path`` in its folder, with its suffix kept."""
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


def as_output_error(err: OSError, path: Path) -> OSError:
    """``err`` as an ``OSError`` about the output ``path``. GDAL reports a full disk as a plain
    "Write failed": a write failure without an errno on a device with less than
    :data:`NEARLY_FULL` bytes free is named a full disk (``ENOSPC``)."""
    code = err.errno
    text = str(err).strip().splitlines()
    first = text[0] if text else type(err).__name__
    if code is None and (is_full_disk(err) or _free_bytes(path) < NEARLY_FULL):
        return OSError(errno.ENOSPC, f"No space left on device ({first})", str(path))
    if code is None:
        return OSError(f"{path}: writing failed ({first})")
    return OSError(code, err.strerror or os.strerror(code), str(path))


NEARLY_FULL = 1 << 20


def _free_bytes(path: Path) -> int:
    """Bytes free for the user on the device of ``path``'s folder (a large number if unknown)."""
    try:
        return shutil.disk_usage(path.parent).free
    except OSError:
        return 1 << 62
