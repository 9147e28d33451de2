"""Errors densekit raises for bad input and failed writes. The CLI prints their message on one
line and exits with their :attr:`~DensekitError.exit_status`."""

from __future__ import annotations

import errno
from typing import ClassVar


class DensekitError(Exception):
    """Base class: a problem with what the user gave (a file, a name, a value); exit status 2."""

    exit_status: ClassVar[int] = 2


class UnknownNameError(DensekitError, KeyError):
    """A name that is not in a registry; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(DensekitError):
    """A weights file that is missing, unreadable, not a state dict or of another architecture."""


class InputImageError(DensekitError):
    """An image that cannot be used: unreadable, wrong bands, non-finite pixels, too small."""


class OutputError(DensekitError):
    """Writing an output failed (no space left, no permission, ...); exit status 1. Nothing is
    left at the output path: the previous file, if any, is still there."""

    exit_status: ClassVar[int] = 1


class Terminated(BaseException):
    """The process received SIGTERM; raised in the main thread so that clean-ups run."""


HINTS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "is a folder",
    errno.EIO: "input/output error (a damaged disk or file?)",
}


def describe_os_error(err: OSError, path: object = None) -> str:
    """One line for an OS error: the file it concerns (``path`` when the error names none) and
    what happened, e.g. ``out.tif: no space left on device``."""
    where = err.filename if err.filename is not None else path
    what = HINTS.get(err.errno or 0) if err.errno is not None else None
    if what is None:
        what = err.strerror or str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"{where}: {what}" if where is not None else str(what)


def is_full_disk(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) says the disk or quota is full; GDAL reports a full
    disk as a write failure without an errno."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e).lower()
        if "no space left" in text or "disk quota" in text:
            return True
        e = e.__cause__ or e.__context__
    return False
