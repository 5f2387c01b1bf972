"""Printing a rich table whole: the one rule the commands' tables follow.

Piped or redirected (``gpufleet simulate > out.txt``, ``| less``) with no ``COLUMNS`` set, a
table is printed at its natural width: nothing is cut to an 80-column guess. On a terminal (or
with ``COLUMNS``) narrower than the table, cells wrap (``fold``) instead of ending in "…", so no
figure is lost. ``gpufleet report`` drops columns by priority first (``--wide`` for all).
"""

from __future__ import annotations

import os
from typing import Any


def print_table(table: Any) -> None:
    """Print ``table`` (a ``rich.table.Table``) on standard output."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        wide = console.options.update_width(100_000)
        need = console.measure(table, options=wide).maximum
        if need > console.width:
            console = Console(width=need)
    else:
        for column in table.columns:
            if column.overflow == "ellipsis":
                column.overflow = "fold"
    console.print(table)
