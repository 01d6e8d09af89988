"""A report as blocks (headings, tables, notes, plots), rendered to Markdown, CSV and one self-contained HTML page.

Text from manifests and records is data: control and invisible characters are escaped, then HTML
escapes it (html.escape) and Markdown escapes its markup characters. A cell of a time measured on an
emulated target says *emulated*; a cell flagged as a regression is highlighted.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Sequence, Union

from toolchain.fsutil import atomic_write_bytes, disk_error, ensure_writable_dir

# C0/C1 controls and the invisible characters that reorder or hide text (as toolchain.cli.output treats them)
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_MARKDOWN = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")
DASH = "—"


def clean(value: Any) -> str:
    """Text as data: control and invisible characters written as \\xNN / \\uNNNN."""
    def escaped(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _UNSAFE.sub(escaped, str(value)).replace("\n", " ").replace("\t", " ")


def md(value: Any) -> str:
    """Text for a Markdown document: cleaned, markup characters backslash-escaped."""
    return _MARKDOWN.sub(r"\\\1", clean(value))


def fmt(value: Any, digits: int = 2) -> str:
    """A number with `digits` decimals, text as it is, None as "—"."""
    if value is None or value == "":
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    return str(value)


@dataclass(frozen=True)
class Cell:
    """A table cell: its text, whether it is a time measured under emulation, and a highlight."""

    text: str
    emulated: bool = False
    flag: str | None = None  # "regression", "improvement"
    href: str | None = None  # a link in the HTML page (an anchor of the same page: "#a-<artifact id>")

    @property
    def plain(self) -> str:
        return self.text + (" (emulated)" if self.emulated and self.text != DASH else "")


CellValue = Union[Cell, str, int, float, None]


def cell(value: CellValue) -> Cell:
    return value if isinstance(value, Cell) else Cell(fmt(value))


@dataclass(frozen=True)
class TableBlock:
    title: str
    columns: list[str]
    rows: list[list[CellValue]]
    role: str = "table"  # the table's data-table attribute in the HTML page (what tests look for)
    numeric: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2
    anchor: str | None = None


@dataclass(frozen=True)
class Notes:
    lines: list[str]


@dataclass(frozen=True)
class Plot:
    svg: str
    caption: str


Block = Union[Heading, TableBlock, Notes, Plot]


def _numeric(rows: Sequence[Sequence[CellValue]], index: int) -> bool:
    texts = [cell(row[index]).text for row in rows if index < len(row)]
    return bool(texts) and all(re.match(r"^[-+]?[\d,.]+( / [-+]?[\d,.]+)*%?$", text) or text == DASH for text in texts)


def markdown(title: str, blocks: Sequence[Block]) -> str:
    """The report as GitHub-flavoured Markdown (plots are in the HTML page)."""
    out = [f"# {md(title)}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + md(block.text), ""]
        elif isinstance(block, Notes):
            out += [f"- {md(line)}" for line in block.lines] + [""]
        elif isinstance(block, Plot):
            out += [f"*plot: {md(block.caption)} (see the HTML page)*", ""]
        else:
            out += [f"**{md(block.title)}**", "", "| " + " | ".join(md(c) for c in block.columns) + " |",
                    "|" + "|".join("---:" if _numeric(block.rows, i) else "---" for i in range(len(block.columns)))
                    + "|"]
            for row in block.rows:
                cells = []
                for value in row:
                    item = cell(value)
                    text = md(item.text) + (" *emulated*" if item.emulated and item.text != DASH else "")
                    cells.append(f"**{text}** ({item.flag})" if item.flag == "regression" else text)
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)


def csv_text(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV of raw values (None empty); text that a spreadsheet would run as a formula is quoted with '."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = []
        for value in row:
            if value is None:
                values.append("")
            elif isinstance(value, str):
                text = clean(value)
                values.append("'" + text if text[:1] in ("=", "+", "-", "@") else text)
            else:
                values.append(value)
        writer.writerow(values)
    return buffer.getvalue()


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px auto;max-width:1360px;
color:#1b1b1b;padding:0 16px;line-height:1.4}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
h3{font-size:16px;margin-top:22px}.meta{color:#555;font-size:13px}
table{border-collapse:collapse;margin:6px 0 14px;font-size:13px}caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border:1px solid #d0d0d0;padding:3px 7px;vertical-align:top}th{background:#f2f4f7;text-align:left}
td:first-child{white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fafafa}.emu{color:#a05a00;font-style:italic;font-size:11px}
td.regression{background:#fde2e1!important;font-weight:700;color:#a00}td.improvement{background:#e3f5e1!important}
.plots{display:flex;flex-wrap:wrap;gap:14px}figure{margin:0;border:1px solid #e2e2e2;padding:6px;background:#fff}
figcaption{font-size:12px;color:#555;max-width:640px}ul.notes{font-size:13px;color:#333}
.scroll{overflow-x:auto}nav a{margin-right:12px;font-size:13px}
"""


def html_page(title: str, subtitle: str, blocks: Sequence[Block], nav: Sequence[tuple[str, str]] = ()) -> str:
    """One self-contained HTML page: inline CSS, inline SVG plots, no script, no external reference."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{escape(clean(title))}</title><style>{_STYLE}</style></head><body>",
           f"<h1>{escape(clean(title))}</h1>", f'<p class="meta">{escape(clean(subtitle))}</p>']
    if nav:
        out.append("<nav>" + "".join(f'<a href="#{escape(anchor)}">{escape(clean(text))}</a>' for anchor, text in nav)
                   + "</nav>")
    plots: list[str] = []

    def flush() -> None:
        if plots:
            out.append('<div class="plots">' + "".join(plots) + "</div>")
            plots.clear()

    for block in blocks:
        if isinstance(block, Plot):
            plots.append(f"<figure>{block.svg}<figcaption>{escape(clean(block.caption))}</figcaption></figure>")
            continue
        flush()
        if isinstance(block, Heading):
            anchor = f' id="{escape(block.anchor)}"' if block.anchor else ""
            out.append(f"<h{block.level}{anchor}>{escape(clean(block.text))}</h{block.level}>")
        elif isinstance(block, Notes):
            out.append('<ul class="notes">' + "".join(f"<li>{escape(clean(line))}</li>" for line in block.lines)
                       + "</ul>")
        else:
            numeric = {i for i in range(len(block.columns)) if _numeric(block.rows, i)}
            head = "".join(f"<th>{escape(clean(c))}</th>" for c in block.columns)
            body = []
            for row in block.rows:
                cells = []
                for index, value in enumerate(row):
                    item = cell(value)
                    classes = " ".join(name for name in ("num" if index in numeric else "", item.flag or "") if name)
                    mark = ' <span class="emu">emulated</span>' if item.emulated and item.text != DASH else ""
                    text = escape(clean(item.text))
                    if item.href and item.href.startswith("#"):  # links within the page only: it needs no network
                        text = f'<a href="{escape(item.href)}">{text}</a>'
                    cells.append(f'<td{f" class={chr(34)}{classes}{chr(34)}" if classes else ""}>'
                                 f"{text}{mark}</td>")
                body.append("<tr>" + "".join(cells) + "</tr>")
            out.append(f'<div class="scroll"><table data-table="{escape(block.role)}"><caption>'
                       f"{escape(clean(block.title))}</caption><thead><tr>{head}</tr></thead><tbody>"
                       + "".join(body) + "</tbody></table></div>")
    flush()
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def json_text(document: Any) -> str:
    """A report document as indented JSON."""
    return json.dumps(document, indent=2, sort_keys=True, default=str) + "\n"


def write_files(folder: Path, files: dict[str, str]) -> list[Path]:
    """Write rendered files into `folder`, each atomically (all were rendered before the first is written)."""
    ensure_writable_dir(folder, "report folder")
    written = []
    for name, text in files.items():
        path = folder / name
        try:
            atomic_write_bytes(path, text.encode())
        except OSError as exc:
            failure = disk_error(exc, "free space or choose another folder (--output) and rerun", path)
            if failure is None:
                raise
            raise failure from None
        written.append(path)
    return written
