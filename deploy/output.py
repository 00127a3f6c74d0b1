"""The one output sink: results on stdout (a rich table, or JSON with --json), progress on stderr.

So `deploy status --json | jq` always gets clean JSON. rich is imported only when something is printed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def progress(message: str) -> None:
    from rich.console import Console

    Console(file=sys.stderr, highlight=False, soft_wrap=True).print(f"[dim]›[/dim] {message}", markup=True)


def progress_line(message: str) -> None:
    """A progress line rewritten in place on stderr (a byte counter); `end_progress_line` ends it."""
    sys.stderr.write(f"\r{message}")
    sys.stderr.flush()


def end_progress_line() -> None:
    """Ends a `progress_line`, so what follows (the result, or an error) starts a line of its own."""
    sys.stderr.write("\n")
    sys.stderr.flush()


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str, sort_keys=True) + "\n")
    sys.stdout.flush()


def emit_text(text: str) -> None:
    sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


def emit_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str | None = None
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console(file=sys.stdout, highlight=False, width=max(100, min(200, _width()))).print(table)


def _width() -> int:
    """The terminal's width; a pipe or a file gets the widest table, so an address is never folded for a grep."""
    import shutil

    if not sys.stdout.isatty():
        return 200
    return shutil.get_terminal_size((140, 24)).columns


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return ""
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def fmt_usd(x: float | None) -> str:
    return "" if x is None else f"${x:.4f}"
