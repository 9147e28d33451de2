"""Errors densekit raises for bad input. The CLI prints their message and exits non-zero."""

from __future__ import annotations


class DensekitError(Exception):
    """Base class: a problem with what the user gave (a file, a name, a value)."""


class UnknownNameError(DensekitError, KeyError):
    """A name that is not in a registry; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(DensekitError):
    """A weights file that is missing, unreadable, not a state dict or of another architecture."""


class InputImageError(DensekitError):
    """An image that cannot be used: unreadable, wrong bands, non-finite pixels, too small."""
