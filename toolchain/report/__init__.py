"""Tables and markdown of pipeline and benchmark results (built here, printed by toolchain.cli.output)."""

from toolchain.report.tables import Table, artifact_notes, artifact_table, bench_notes, bench_table, markdown

__all__ = ["Table", "artifact_notes", "artifact_table", "bench_notes", "bench_table", "markdown"]
