"""The only place that prints: data to stdout (tables or JSON), messages and progress to stderr.

Everything printed goes through `plain`: text from a target (its os-release, facts, stderr), a file
name, a checkpoint or a library's exception is data, never markup and never terminal control.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

# C0 and C1 controls (ESC starts every terminal escape sequence), and the invisible characters that
# reorder or hide text (bidi overrides and isolates, zero-width ones)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")

# Piped output (files, CI logs) gets wide tables instead of rich's 80-column default.
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain(value: object) -> str:
    """Any text as printable data: control and invisible characters escaped (ESC -> \\x1b, newline -> \\x0a)."""
    return _UNSAFE.sub(_escaped, str(value))


def emit_json(data: Any) -> None:
    """Machine-readable result on stdout (one JSON document)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def lines(values: Iterable[str]) -> None:
    """Plain lines of data on stdout (file paths): one per value, control characters escaped."""
    for value in values:
        sys.stdout.write(plain(value) + "\n")
    sys.stdout.flush()


_last_message: list[str] = []


def last_message() -> str | None:
    """The latest status message shown (what an interrupted command was doing)."""
    return _last_message[-1] if _last_message else None


def info(message: str) -> None:
    """A progress or status message for humans, on stderr."""
    _last_message[:] = [message]
    stderr.print(Text(plain(message)), highlight=False)


def warn(message: str) -> None:
    stderr.print(Text.assemble(("warning:", "yellow"), " ", plain(message)), highlight=False)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]],
          right_align: Iterable[str] = ()) -> None:
    """A plain table on stdout."""
    aligned = set(right_align)
    view = Table(title=Text(plain(title)) if title is not None else None, title_justify="left", box=None,
                 pad_edge=False, header_style="bold")
    for column in columns:
        view.add_column(Text(plain(column)), justify="right" if column in aligned else "left", no_wrap=True)
    for row in rows:
        view.add_row(*(Text("" if cell is None else plain(cell)) for cell in row))
    stdout.print(view)


class PlainTextColumn(TextColumn):
    """A progress column whose text (file names, a target's progress events) is data, not markup."""

    def render(self, task: Task) -> Text:
        return Text(plain(self.text_format.format(task=task)), style=self.style, justify=self.justify)


def progress() -> Progress:
    """A progress bar on stderr with ETA (transient: it disappears when done)."""
    return Progress(PlainTextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    PlainTextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                    console=stderr, transient=True)
