"""The only place that prints: data to stdout (tables or JSON), messages and progress to stderr."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

# Piped output (files, CI logs) gets wide tables instead of rich's 80-column default.
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


def emit_json(data: Any) -> None:
    """Machine-readable result on stdout (one JSON document)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    """A progress or status message for humans, on stderr."""
    stderr.print(message, highlight=False)


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]],
          right_align: Iterable[str] = ()) -> None:
    """A plain table on stdout."""
    aligned = set(right_align)
    view = Table(title=title, title_justify="left", box=None, pad_edge=False, header_style="bold")
    for column in columns:
        view.add_column(column, justify="right" if column in aligned else "left", no_wrap=True)
    for row in rows:
        view.add_row(*("" if cell is None else str(cell) for cell in row))
    stdout.print(view)


def progress() -> Progress:
    """A progress bar on stderr with ETA (transient: it disappears when done)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                    console=stderr, transient=True)
