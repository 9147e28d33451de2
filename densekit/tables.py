"""Tables for people and for ``grep``: a rich table in a terminal, plain lines elsewhere.

Outside a terminal (a pipe, a file, a log) a table is one line per row, its cells separated by
two spaces and never wrapped, under a header line, so ``densekit backbones | grep vitl16``
finds every entry and ``wc -l`` counts them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The header and one line per row, each column padded to its widest cell (one-line cells:
    a newline in a cell becomes ``", "``)."""
    cells = [[" ".join(str(c).replace("\n", ", ").split()) for c in row] for row in rows]
    widths = [max([len(col), *(len(r[i]) for r in cells)]) for i, col in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return lines


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    title: str | None = None,
    width: int | None = None,
    file: TextIO | None = None,
) -> None:
    """``rows`` as a rich table when ``file`` (default stdout) is a terminal or ``width`` is
    given, else as :func:`plain_table` lines (the title first, when given)."""
    out = file or sys.stdout
    if width is None and not out.isatty():
        if title:
            print(title, file=out)
        print("\n".join(plain_table(columns, rows)), file=out)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(width=width, file=out).print(table)
