"""The data side of a feature-cache key: which files, window and reading settings an item is.

:mod:`densekit.models.cache` pairs it with the model side and stores the features under both. A
file is named by its absolute path, size and modification time, so an edited file is another key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path


def item_key(paths: list[str], window: Sequence[int], region: Sequence[int], extra: dict) -> str:
    """The data side of the key for one window of one date."""
    files = []
    for p in paths:
        st = os.stat(p)
        files.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    record = {"files": files, "window": list(window), "region": list(region), **extra}
    return json.dumps(record, sort_keys=True, default=str)
