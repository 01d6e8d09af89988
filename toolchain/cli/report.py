"""`toolchain report`: what the artifact store holds, for people (HTML, Markdown) and machines (CSV, JSON).

Three reports, each written as report|compare|paper .html/.md/.csv/.json into --output (default:
<artifacts>/report/); the paths written are printed on stdout, one per line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from toolchain.cli.options import DEFAULT_ARTIFACTS, ArtifactsOption, JsonOption
from toolchain.cli.output import emit_json, info, lines
from toolchain.errors import UsageError


def report(
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    model: Annotated[str, typer.Option("--model", "-m", help="Model name pattern, e.g. 'hps-*'.")] = "*",
    since: Annotated[Optional[str], typer.Option(
        "--since", help="Only artifacts and bench records from this ISO date or time on (UTC), e.g. 2026-12-01.")] = None,
    target: Annotated[Optional[str], typer.Option(
        "--target", "-t", help="Only measurements of this target (local, bluebox2, emulated, ...).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Folder for the report's files (default: <artifacts>/report).")] = None,
    compare: Annotated[Optional[tuple[Path, Path]], typer.Option(
        "--compare", help="Compare B against A: two bench records, artifact folders or artifact stores.")] = None,
    paper: Annotated[bool, typer.Option("--paper", help="The papers' Tables 2-5 and 7 with our columns.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Report the store: the papers' figures beside ours, latency, GFLOP/s, the gate's log, plots."""
    from toolchain.report import pages, render
    from toolchain.report.collect import Filters, collect, parse_since

    if compare and paper:
        raise UsageError("--compare and --paper are two different reports", "run them one at a time")
    filters = Filters(model=model, since=parse_since(since), target=target)
    folder = output or artifacts / "report"
    if compare:
        from toolchain.report.compare import compare as compare_sides

        document = compare_sides(*compare)
        name, title = "compare", f"toolchain: {compare[1]} against {compare[0]}"
        blocks, table = pages.compare_blocks(document), pages.compare_csv_rows(document)
        columns, rows = table[0], table[1:]
    elif paper:
        from toolchain.report.paper import paper_document

        document = paper_document(artifacts, filters)
        name, title = "paper", "toolchain: the papers' tables beside our measurements"
        blocks, table = pages.paper_blocks(document), pages.paper_csv_rows(document)
        columns, rows = table[0], table[1:]
    else:
        document = collect(artifacts, filters)
        name, title = "report", f"toolchain report: {len(document['models'])} artifact(s) in {artifacts}"
        blocks = pages.report_blocks(document)
        columns, rows = pages.CSV_COLUMNS, pages.report_csv_rows(document)
    subtitle = (f"generated from {artifacts} (filters: model {model}, since {since or '—'}, target {target or 'any'})"
                if not compare else f"A = {compare[0]}, B = {compare[1]}")
    nav = [(block.anchor, block.text) for block in blocks if isinstance(block, render.Heading) and block.anchor
           and block.level == 2][:40]
    files = {f"{name}.html": render.html_page(title, subtitle, blocks, nav),
             f"{name}.md": render.markdown(title, blocks), f"{name}.csv": render.csv_text(columns, rows),
             f"{name}.json": render.json_text(document)}
    written = render.write_files(folder, files)
    if json_output:
        emit_json({"written": [str(path) for path in written], "report": document})
        return
    lines(str(path.resolve()) for path in written)
    info(f"open {written[0]} in a browser (self-contained: no network)")


def register(app: typer.Typer) -> None:
    """Add `report` to the toolchain app."""
    app.command("report")(report)
