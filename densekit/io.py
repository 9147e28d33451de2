"""Writing outputs all-or-nothing: each to a temporary file beside it, then moved into place."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path


def atomic_outputs(writers: dict[Path, Callable[[Path], object]]) -> None:
    """Run each ``writer(tmp_path)``; only when all succeeded move the files to their paths.

    On any failure the temporary files are removed and nothing appears at the output paths.
    """
    tmps: dict[Path, Path] = {}
    try:
        for path, write in writers.items():
            # Keep the real suffix: some writers pick the format from it.
            tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
            tmps[path] = tmp
            write(tmp)
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    finally:
        for tmp in tmps.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
