"""Naming the files of a dataset: folders, patterns or lists, and pairing them up.

Images pair with their targets by file stem (folders), by what the first run of wildcards of a
pattern matched (``images/*/imgs_1`` with ``labels/*/cm/*-cm.tif`` pair by city; ``img_[0-9]*``
keys ``img_12.tif`` as ``12``), or by position (lists); any mismatch is an error naming the
unpaired files.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from pathlib import Path

from densekit.data.vectors import VECTOR_SUFFIXES
from densekit.errors import DensekitError

RASTER_SUFFIXES = (
    ".tif",
    ".tiff",
    ".png",
    ".jpg",
    ".jpeg",
    ".jp2",
    ".img",
    ".vrt",
    *VECTOR_SUFFIXES,
)
Files = str | list[str]


def _class_end(part: str, start: int) -> int | None:
    """Index of the ``]`` closing the ``[`` at ``start`` (as :mod:`fnmatch` reads it), or None
    when there is none and the ``[`` is a literal."""
    i = start + 1
    if i < len(part) and part[i] == "!":
        i += 1
    if i < len(part) and part[i] == "]":
        i += 1  # a leading ] is a member of the class
    end = part.find("]", i)
    return end if end >= 0 else None


def _component_regex(part: str) -> str:
    """Regex of one glob path component in which each run of consecutive wildcards (``*``,
    ``?``, ``[...]``) is one group: ``img_[0-9]*.tif`` -> ``img_([0-9].*)\\.tif``."""
    out, run, j = "", "", 0
    while j < len(part):
        c = part[j]
        end = _class_end(part, j) if c == "[" else None
        if c == "*":
            run += ".*"
        elif c == "?":
            run += "."
        elif end is not None:
            inner = part[j + 1 : end]
            negate = inner.startswith("!")
            inner = re.sub(r"([\\\[&~|^])", r"\\\1", inner[1:] if negate else inner)
            run += "[" + ("^" if negate else "") + inner + "]"
            j = end
        else:
            if run:
                out, run = out + f"({run})", ""
            out += re.escape(c)
        j += 1
    return out + (f"({run})" if run else "")


def _glob_key(pattern: str, match: str) -> str:
    """The pairing key of a pattern match: the text the first run of wildcards (``*``, ``?``,
    ``[...]``) matched, in the first path component that has one, e.g. ``001`` for
    ``img_*.tif`` and ``img_001.tif``, ``12`` for ``img_[0-9]*.tif`` and ``img_12.tif``;
    ``hongkong`` for ``images/*/imgs_1``. A file suffix is dropped only when the wildcards
    matched it (``*`` and ``a.tif`` give ``a``; ``*_dsm.tif`` and ``tile.v2_dsm.tif`` give
    ``tile.v2``)."""
    parts, matched = Path(pattern).parts, Path(match).parts
    for i, part in enumerate(parts):
        if not any(c in part for c in "*?[") or i >= len(matched):
            continue
        last = i == len(parts) - 1
        name = matched[i]
        m = re.fullmatch(_component_regex(part), name)
        if not m or not m.groups():
            return Path(name).stem if last else name
        key = m.group(1)
        suffix = Path(name).suffix
        if last and suffix and m.end(1) > len(name) - len(suffix):
            key = Path(key).stem  # the wildcards matched the file suffix too
        return key
    return Path(match).stem


def list_rasters(spec: Files, what: str) -> tuple[list[str], list[str] | None]:
    """Images named by ``spec`` and their pairing keys (None: pair by position).

    A folder string lists its raster files (keys: file stems); a pattern lists its matches, which
    may be folders of single-band files (keys: what the first run of wildcards matched); a list
    names the files or band folders themselves (paired by position).
    """
    if isinstance(spec, list):
        missing = [f for f in spec if not Path(f).exists()]
        if missing:
            raise DensekitError(f"{what}: no such file(s): {missing[:5]}")
        return [str(f) for f in spec], None
    path = Path(spec)
    if path.is_file():
        return [str(path)], None
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
        if not files:
            raise DensekitError(
                f"{what}: folder {path} holds no raster files ({', '.join(RASTER_SUFFIXES)})"
            )
        return files, [Path(f).stem for f in files]
    files = sorted(glob.glob(spec))
    if not files:
        raise DensekitError(f"{what}: {spec} is not a file or folder and matches no file")
    return files, [_glob_key(spec, f) for f in files]


def pair_files(specs: Sequence[tuple[str, Files]]) -> list[tuple[str, ...]]:
    """Pair the files of several inputs (e.g. images and labels) into tuples."""
    lists = [list_rasters(spec, name) for name, spec in specs]
    names = [name for name, _ in specs]
    if any(keys is not None for _, keys in lists):
        if any(keys is None for _, keys in lists):
            raise DensekitError(
                f"{' and '.join(names)}: give all of them as folders/patterns or all as lists"
            )
        by_key = []
        for name, (files, keys) in zip(names, lists, strict=True):
            table = dict(zip(keys or [], files, strict=True))
            if len(table) != len(files):
                raise DensekitError(f"{name}: several files share a pairing key: {files[:5]}")
            by_key.append(table)
        common = set(by_key[0]).intersection(*by_key[1:])
        unpaired = {n: sorted(set(t) - common)[:5] for n, t in zip(names, by_key, strict=True)}
        if any(unpaired.values()):
            raise DensekitError(
                f"{' and '.join(names)} do not pair up by file name; unpaired: {unpaired}"
            )
        return [tuple(t[k] for t in by_key) for k in sorted(common)]
    counts = [len(files) for files, _ in lists]
    if len(set(counts)) != 1:
        raise DensekitError(
            f"{' and '.join(names)} do not pair up: {dict(zip(names, counts, strict=True))} files"
        )
    return list(zip(*(files for files, _ in lists), strict=True))
