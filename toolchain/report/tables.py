"""Result tables: what a manifest or a bench result says, as rows for the CLI and as markdown.

Every latency is labeled with what measured it (CPU, threads, batch) and emulated runs say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from toolchain.manifest import FP32_NAME, INT8_NAME

if TYPE_CHECKING:
    from toolchain.manifest import Manifest


@dataclass(frozen=True)
class Table:
    """A titled table: column names, rows of cells, and which columns are numbers (right-aligned)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    right_align: list[str] = field(default_factory=list)


def _kib(size: int) -> str:
    return f"{size / 1024:.1f}"


def _speed_words(ratio: float) -> str:
    """'1.67x slower' / '1.20x faster' for an INT8-over-FP32 latency ratio."""
    return f"{ratio:.2f}x slower" if ratio >= 1 else f"{1 / ratio:.2f}x faster"


def artifact_table(manifest: "Manifest") -> Table:
    """FP32 vs INT8: top-1 on the eval set, size, node count, quick host latency."""
    accuracy, latency, nodes = manifest.accuracy, manifest.latency, manifest.nodes
    fp32_nodes = nodes.get("simplified", nodes.get("exported", nodes.get("source")))
    columns = ["variant", "top-1 %", "drop pp", "size KiB", "nodes", "p50 ms", "p90 ms"]
    rows = []
    for variant, name, node_count in (("fp32", FP32_NAME, fp32_nodes), ("int8", INT8_NAME, nodes.get("int8"))):
        timing = latency.get(variant, {})
        rows.append([variant, f"{accuracy.variant(variant).top1:.2f}",
                     f"{accuracy.drop_pp:+.2f}" if variant == "int8" else "", _kib(manifest.files[name].bytes),
                     node_count, f"{timing['p50']:.3f}" if timing else "-", f"{timing['p90']:.3f}" if timing else "-"])
    dataset = manifest.dataset.name or "eval set"
    title = (f"{manifest.model} {manifest.artifact_id}: {dataset}, {accuracy.fp32.count} eval images; "
             f"latency on {latency.get('cpu', 'this CPU')}, {latency.get('threads', '?')} thread, "
             f"batch {latency.get('batch', '?')}")
    return Table(title, columns, rows, ["top-1 %", "drop pp", "size KiB", "nodes", "p50 ms", "p90 ms"])


def artifact_notes(manifest: "Manifest") -> list[str]:
    """The lines under the table: parity, gate, size and speed verdicts."""
    parity = manifest.parity
    measured = ", ".join(f"{key.removesuffix('_max_abs')} {value:.2g}" for key, value in parity.items()
                         if key.endswith("_max_abs"))
    tolerance = parity.get("tolerance", parity.get("atol", 0))
    notes = [f"parity max |d| ({measured}) <= {tolerance:.2g} (atol {parity.get('atol', 0):g} + rtol "
             f"{parity.get('rtol', 0):g} x max |logit|) on {parity.get('images', '?')} eval images"] if measured else []
    kept = manifest.kept_float
    notes.append(f"gate: drop {manifest.accuracy.drop_pp:+.2f} pp <= {manifest.accuracy.max_drop_pp:g} pp"
                 + (f"; kept in float: {', '.join(kept)}" if kept else "; every quantizable node is INT8")
                 + (" (the gate engaged)" if manifest.quantization.get("gate_engaged") else ""))
    notes.append(f"INT8 is {manifest.sizes()['int8_over_fp32']:.2f}x the FP32 file size")
    if manifest.lineage:
        notes.append("passes: " + " -> ".join(entry["pass"] + (" (cached)" if entry.get("cached") else "")
                                             for entry in manifest.lineage))
    latency = manifest.latency
    if latency.get("int8_over_fp32_p50"):
        ratio = latency["int8_over_fp32_p50"]
        notes.append(f"INT8 is {_speed_words(ratio)} than FP32 on this CPU (p50, {latency.get('threads')} thread, "
                     f"batch {latency.get('batch')})" + ("" if ratio < 1 else ": INT8 is not automatically faster "
                                                         "on a CPU; measure the target with `toolchain bench`"))
    return notes


def bench_table(document: dict[str, Any], agreements: Sequence[Any] = ()) -> Table:
    """One row per (variant, threads): latency percentiles, throughput, peak RSS, accuracy, agreement."""
    target = document["target"]
    emulated = " EMULATED" if target.get("emulated") else ""
    agreed = {(item.variant, item.threads, item.batch): item.agreement_pct for item in agreements}
    rows = []
    for entry in document["results"]:
        latency = entry["latency_ms"]
        agreement = agreed.get((entry["variant"], entry["threads"], entry["batch"]))
        rows.append([entry["variant"], entry["threads"], entry["batch"], f"{latency['p50']:.3f}",
                     f"{latency['p90']:.3f}", f"{latency['p99']:.3f}", f"{latency['mean']:.3f}", f"{latency['std']:.3f}",
                     f"{entry['throughput_ips']:.0f}", f"{entry['peak_rss_mb']:.0f}", f"{entry['accuracy']['top1']:.2f}",
                     f"{agreement:.2f}" if agreement is not None else "-", _kib(entry["model_bytes"]),
                     *achieved_cells(entry)])
    timed = [f"{name}{emulated}" for name in ("p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms", "img/s")]
    rates = [f"{name}{emulated}" for name in ("GOP/s p50", "% peak p50")]
    columns = ["variant", "threads", "batch", *timed, "peak RSS MB", "top-1 %", "agree %", "KiB", *rates, "peak"]
    title = (f"measured on {target['hostname']}: {target['arch']} {target['cpu_model']}, {target['cores']} cores, "
             f"onnxruntime {target['onnxruntime']}, {target['os']}"
             + (" -- EMULATED (qemu): latency is not the target's" if emulated else ""))
    return Table(title, columns, rows, columns[1:-1])


def achieved_cells(entry: dict[str, Any], key: str = "p50") -> list[str]:
    """Achieved GOP/s and % of the peak at one latency percentile, and which peak ("-" where the result has none)."""
    gflops = (entry.get("gflops") or {}).get(key)
    percent = (entry.get("pct_of_peak") or {}).get(key)
    used = entry.get("peak_used") or {}
    which = f"{used.get('dtype', 'fp32')} {used['source']}" if used.get("source") else "-"
    return [f"{gflops:.2f}" if gflops is not None else "-", f"{percent:.1f}" if percent is not None else "-", which]


def falling_peak_warnings(dtype: str, where: str, values: dict[int, float]) -> list[str]:
    """A warning for each step where a measured peak falls as threads are added: the machine was busy when it was
    measured (a core's ceiling does not drop with a second core), so % of peak at the higher count reads high."""
    counts = sorted(values)
    return [f"warning: the {dtype} peak on {where} is lower at {more} threads ({values[more]:.1f}) than at {fewer} "
            f"({values[fewer]:.1f}): the machine was busy when it was measured, so % of peak at {more} threads reads "
            "high; measure again with an empty peak cache (~/.cache/toolchain/peak, or $TOOLCHAIN_CACHE/peak)"
            for fewer, more in zip(counts, counts[1:]) if values[more] < values[fewer]]


def _one_peak(label: str, peak: dict[str, Any] | None, note: str | None) -> str:
    return f"{label} peak {peak['source']}: {peak['method']}" if peak else (note or f"no {label} peak")


def peak_note(compute: dict[str, Any] | None) -> str:
    """Where the GOP/s and the peaks they are compared with come from (FP32 rows: float32, INT8 rows: INT8)."""
    if not compute:
        return "GOP/s: this result has no compute section (measured before toolchain recorded MACs)"
    where = _one_peak("FP32", compute.get("peak"), compute.get("peak_note"))
    if "int8_peak" in compute:
        where += "; " + _one_peak("INT8", compute.get("int8_peak"), compute.get("int8_peak_note"))
    else:
        where += " (INT8 rows too: this record predates the INT8 peak)"
    return (f"GOP/s = 2 x {compute['macs']:,} MACs x batch / latency ({compute['macs_source']}; float ops on FP32 "
            f"rows, integer ops on INT8 rows); {where}")


def bench_notes(document: dict[str, Any]) -> list[str]:
    """INT8 vs FP32 per thread count, said plainly (slower is reported as slower)."""
    by_key = {(entry["variant"], entry["threads"], entry["batch"]): entry for entry in document["results"]}
    notes = []
    for (variant, threads, batch), entry in sorted(by_key.items(), key=lambda item: (item[0][1], item[0][0])):
        baseline = by_key.get(("fp32", threads, batch))
        if variant == "fp32" or baseline is None:
            continue
        ratio = entry["latency_ms"]["p50"] / baseline["latency_ms"]["p50"]
        emulated = " -- EMULATED (qemu): says nothing about the target" if document["target"].get("emulated") else ""
        notes.append(f"{variant} is {_speed_words(ratio)} than fp32 at {threads} thread(s), batch {batch} "
                     f"(p50){emulated}")
    settings = document["settings"]
    compute = document.get("compute")
    notes.append(peak_note(compute))
    for section, key, label in (("peak", "fp32_gflops", "FP32"), ("int8_peak", "int8_gops", "INT8")):
        peak = (compute or {}).get(section) or {}
        if peak.get("source") == "measured":
            values = {int(count): float(value) for count, value in (peak.get(key) or {}).items()}
            notes += falling_peak_warnings(label, document["target"]["hostname"], values)
    notes.append(f"protocol: {settings['warmup']} warm-up + >= {settings['runs']} timed runs"
                 + (f" and >= {settings['min_time_s']:g} s" if settings["min_time_s"] else "")
                 + f"; peak RSS per measurement (fresh process); accuracy on {settings['evalset']['count']} eval images")
    return notes


def markdown(table: Table) -> str:
    """A GitHub-flavoured markdown table with its title as a caption line."""
    aligned = set(table.right_align)
    lines = [f"**{table.title}**", "", "| " + " | ".join(table.columns) + " |",
             "|" + "|".join("---:" if column in aligned else "---" for column in table.columns) + "|"]
    lines += ["| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"
