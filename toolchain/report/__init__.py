"""Tables of pipeline and benchmark results (printed by toolchain.cli.output), and `toolchain report`:
collect (the store's records), compare, paper, pages (tables and plots), render (HTML, Markdown, CSV, JSON),
svg (hand-written plots). See docs/report.md."""

from toolchain.report.tables import Table, artifact_notes, artifact_table, bench_notes, bench_table, markdown

__all__ = ["Table", "artifact_notes", "artifact_table", "bench_notes", "bench_table", "markdown"]
