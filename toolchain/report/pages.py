"""The three reports as blocks and CSV rows: the store report, `--compare A B`, `--paper`.

Builds on the documents of toolchain.report.collect / compare / paper; renders nothing itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from toolchain.report.render import DASH, Block, Cell, Heading, Notes, Plot, TableBlock, fmt
from toolchain.report.svg import Point, Series, bars, lines, scatter
from toolchain.report.tables import falling_peak_warnings

MB = 1e6


def _mb(size: Any, digits: int = 3) -> str:
    return fmt(size / MB, digits) if isinstance(size, (int, float)) else DASH


def _kib(size: Any) -> str:
    return fmt(size / 1024, 1) if isinstance(size, (int, float)) else DASH


def _time(value: Any, emulated: bool, digits: int = 3) -> Cell:
    return Cell(fmt(value, digits) if value is not None else DASH, emulated=emulated)


def _triple(values: Any, emulated: bool, digits: int = 2) -> Cell:
    if not isinstance(values, dict) or not values:
        return Cell(DASH)
    return Cell(" / ".join(fmt(values.get(key), digits) for key in ("p50", "p90", "p99")), emulated=emulated)


def _where(row: dict[str, Any]) -> str:
    return row["target"] + (" (export check)" if row["source"] == "export check" else "")


def _seconds_per_epoch(training: dict[str, Any]) -> float | None:
    seconds = [row["seconds"] for row in training.get("epochs", []) if "seconds" in row]
    return sum(seconds) / len(seconds) if seconds else None


# --- the store report ----------------------------------------------------------------------------

MEASUREMENT_COLUMNS = ["where", "CPU", "variant", "threads", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s",
                       "peak RSS MB", "top-1 %", "agree %", "GOP/s p50 / p90 / p99", "% of peak p50 / p90 / p99",
                       "peak GOP/s", "rounds"]


def measurement_row(row: dict[str, Any]) -> list[Any]:
    emulated = bool(row["emulated"])
    return [_where(row), row["cpu"], row["variant"], row["threads"], row["batch"],
            _time(row["p50_ms"], emulated), _time(row["p90_ms"], emulated), _time(row["p99_ms"], emulated),
            _time(row["throughput_ips"], emulated, 0), fmt(row["peak_rss_mb"], 0), fmt(row["top1"]),
            fmt(row["agreement_pct"]), _triple(row["gflops"], emulated), _triple(row["pct_of_peak"], emulated, 1),
            _peak_label(row), row["rounds"]]


def _peak_label(row: dict[str, Any]) -> str:
    """Which peak a row's % is of, its value and where it comes from: "INT8 429.5 (measured)"; "—" where none."""
    if not row["peak_source"]:
        return DASH
    value = f" {fmt(row['peak_value'], 1)}" if row.get("peak_value") else ""
    return f"{(row.get('peak_dtype') or 'fp32').upper()}{value} ({row['peak_source']})"


def _peak_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Where each row's peak comes from, once per place and arithmetic (the export check once: it has none), and
    a warning where a measured peak falls as threads are added."""
    notes: set[str] = set()
    peaks: dict[tuple[str, str, str], dict[int, float]] = {}
    for row in rows:
        if row["source"] == "export check":
            notes.add(f"{_where(row)}: no peak (the export's quick latency check measures none), so no % of peak")
            continue
        dtype = (row.get("peak_dtype") or "fp32").upper()
        notes.add(f"{dtype} peak {row['peak_source'] or 'none'} ({_where(row)}): {row['peak_method'] or DASH}")
        if row["peak_source"] == "measured" and row.get("peak_value") and isinstance(row["threads"], int):
            peaks.setdefault((_where(row), dtype, row["peak_method"] or ""), {})[row["threads"]] = row["peak_value"]
    for (where, dtype, _), values in sorted(peaks.items()):
        notes.update(falling_peak_warnings(dtype, where, values))
    return sorted(notes)


def _paper_first(entry: dict[str, Any]) -> dict[str, Any] | None:
    return entry["paper"][0] if entry["paper"] else None


def _places(entry: dict[str, Any]) -> list[list[Any]]:
    """FP32 and INT8 top-1 on the host (the manifest) and on each target (its fewest-threads measurement)."""
    accuracy = entry["accuracy"]
    rows: list[list[Any]] = [["host (export gate)", fmt(accuracy["fp32_top1"]), fmt(accuracy["int8_top1"]),
                              fmt(accuracy["drop_pp"]), DASH, DASH]]
    by_place: dict[str, dict[str, dict[str, Any]]] = {}
    for row in entry["measurements"]:
        if row["source"] == "bench":
            place = by_place.setdefault(row["target"], {})
            if row["variant"] not in place or row["threads"] < place[row["variant"]]["threads"]:
                place[row["variant"]] = row
    for target, variants in sorted(by_place.items()):
        fp32, int8 = variants.get("fp32", {}), variants.get("int8", {})
        drop = fp32["top1"] - int8["top1"] if fp32 and int8 else None
        rows.append([target, fmt(fp32.get("top1")), fmt(int8.get("top1")), fmt(drop),
                     fmt(fp32.get("agreement_pct")), fmt(int8.get("agreement_pct"))])
    return rows


def _calibration(record: dict[str, Any]) -> Any:
    """A decision-log entry's calibration in words: its method, with the percentile where it has one, after
    "equalized, " where the activation channels were equalized first."""
    percentile = record.get("percentile")
    method = f"{record.get('method')} {percentile:g}" if isinstance(percentile, (int, float)) else record.get("method")
    return f"equalized, {method}" if record.get("equalized") or record.get("equalization") else method


def _gate_rows(gate: dict[str, Any]) -> list[list[Any]]:
    rows = []
    attempts = gate.get("calibration_search") or []
    for attempt in attempts:
        layout = [word for key, word in (("format", attempt.get("format")),
                                         ("per_channel", "per-tensor" if attempt.get("per_channel") is False else None))
                  if attempt.get(key) != attempts[0].get(key) and word]  # the layout alternatives say which
        rows.append(["calibration", ", ".join([_calibration(attempt), *layout]), DASH, fmt(attempt.get("int8_top1")),
                     fmt(attempt.get("drop_pp")), fmt(attempt.get("passed"))])
    for step in gate.get("steps") or []:
        kept = step.get("kept_float") or []
        rows.append(["nodes kept in float", _calibration(gate), ", ".join(kept) if kept else "none",
                     fmt(step.get("int8_top1")), fmt(step.get("drop_pp")),
                     fmt(step.get("drop_pp") is not None and step["drop_pp"] <= gate["max_drop_pp"])])
    if gate.get("qat"):
        qat = gate["qat"]
        rows.append(["quantization-aware training", _calibration(gate), DASH, fmt(qat.get("int8_top1")),
                     fmt(qat.get("drop_pp")), fmt(qat.get("passed"))])
    return rows


def _optimize_block(model: str, log: dict[str, Any]) -> TableBlock:
    """`toolchain optimize`'s decision log: every candidate measured on the target, its numbers, why it lost."""
    target = log.get("target") or {}
    emulated = bool(log.get("emulated"))
    rows = []
    for entry in log.get("candidates") or []:
        measured = entry.get("target") or {}
        host = entry.get("host") or {}
        rows.append([entry.get("candidate"), entry.get("flavour") or DASH,
                     f"{len(entry.get('kept_float') or [])} / {len(entry.get('kept_for_latency') or [])}",
                     fmt(host.get("int8_top1")), fmt(measured.get("top1")), fmt(measured.get("drop_pp")),
                     _time(measured.get("p50_ms"), emulated, 4), entry.get("verdict"), entry.get("why")])
    return TableBlock(f"{model}: toolchain optimize's decision log on {target.get('profile', '?')} "
                      f"({target.get('address', '?')}, {target.get('cpu') or '?'}, onnxruntime "
                      f"{target.get('onnxruntime') or '?'}): chose {log.get('chosen')} ({log.get('variant')}), gate "
                      f"{fmt(log.get('max_drop_pp'), 1)} pp from {log.get('reference', 'FP32')}"
                      + (" -- EMULATED: latencies are qemu's" if emulated else ""),
                      ["candidate", "INT8 flavour", "kept in float (accuracy / latency)", "host top-1 %",
                       "target top-1 %", "drop pp", "p50 ms on the target", "verdict", "why"], rows, role="optimize")


def _training_plot(entry: dict[str, Any]) -> Plot | None:
    epochs = entry["training"]["epochs"]
    if not epochs:
        return None
    series = [Series("test top-1 %", [Point(row["epoch"], row["test_top1"]) for row in epochs])]
    if all("train_acc" in row for row in epochs):
        series.append(Series("train accuracy %", [Point(row["epoch"], row["train_acc"]) for row in epochs]))
    return Plot(lines(f"{entry['model']}: training curves", "epoch", "%", series, role="training"),
                f"training run of the checkpoint: {entry['training']['file']}")


def _artifact_blocks(entry: dict[str, Any]) -> list[Block]:
    model, sizes, training = entry["model"], entry["sizes"], entry["training"]
    blocks: list[Block] = [Heading(f"{model} — artifact {entry['artifact_id']}", 2, f"a-{entry['artifact_id']}"),
                           Notes([f"made {entry['created']} from {entry['kind']}; folder {entry['folder']}"])]
    figures = []
    for paper in entry["paper"]:
        figures.append([f"paper, {paper['table']}", paper["dataset"], fmt(paper["accuracy_pct"]), DASH,
                        fmt(paper["size_mb"], 3), DASH, DASH, fmt(paper["speed_s_per_epoch"], 1),
                        f"{paper['source']}; s/epoch is GPU training time"])
    if not entry["paper"]:
        figures.append(["paper", DASH, DASH, DASH, DASH, DASH, DASH, DASH, "the papers do not report this model"])
    accuracy = entry["accuracy"]
    figures.append(["ours (host)", entry["dataset"], fmt(accuracy["fp32_top1"]), fmt(accuracy["int8_top1"]),
                    _mb(sizes["paper_style_bytes"]), _mb(sizes["onnx_fp32_bytes"]), _mb(sizes["onnx_int8_bytes"]),
                    fmt(_seconds_per_epoch(training), 1),
                    f"{accuracy['count']} eval images; s/epoch: mean of the training log (CPU)"
                    if training["epochs"] else f"{accuracy['count']} eval images"])
    blocks.append(TableBlock(f"{model}: the paper's figures beside ours",
                             ["source", "dataset", "top-1 % (FP32)", "top-1 % (INT8)",
                              "size MB (torch.save state_dict)", "ONNX FP32 MB", "ONNX INT8 MB", "s/epoch", "note"],
                             figures, role="paper-vs-ours"))
    blocks.append(TableBlock(f"{model}: top-1 on the host and on each target",
                             ["where", "FP32 top-1 %", "INT8 top-1 %", "drop pp", "FP32 agree %", "INT8 agree %"],
                             _places(entry), role="accuracy"))
    blocks.append(TableBlock(f"{model}: latency, throughput, memory and achieved GOP/s",
                             MEASUREMENT_COLUMNS, [measurement_row(row) for row in entry["measurements"]],
                             role="measurements"))
    gate = entry["gate"]
    blocks.append(TableBlock(f"{model}: the accuracy gate's decision log (max drop {fmt(gate['max_drop_pp'], 1)} pp, "
                             f"format {gate.get('format') or DASH})",
                             ["step", "method", "kept in float", "INT8 top-1 %", "drop pp", "passed"],
                             _gate_rows(gate) or [[DASH] * 6], role="gate"))
    if entry.get("optimize"):
        blocks.append(_optimize_block(model, entry["optimize"]))
    notes = [f"MACs per image: {fmt(entry['macs'])} ({entry['macs_source']})" if entry["macs"] else
             "MACs: not known"]
    notes.append("GOP/s = 2 x MACs x batch / latency: float operations (GFLOP/s) on FP32 rows, integer operations "
                 "on INT8 rows; % of peak: of the peak of the row's own arithmetic on that machine and thread count "
                 "(the peak column: FP32 = numpy float32 GEMM, INT8 = onnxruntime MatMulInteger)")
    notes += _peak_notes(entry["measurements"])
    notes.append(f"kept in float: {', '.join(gate['kept_float']) or 'none'}; gate engaged: "
                 f"{fmt(gate.get('gate_engaged'))}")
    if gate.get("reduce_range_reason"):
        notes.append(f"reduce range: {gate['reduce_range_reason']}")
    if training.get("note"):
        notes.append(training["note"])
    blocks.append(Notes(notes))
    plot = _training_plot(entry)
    if plot:
        blocks.append(plot)
    return blocks


def _overview(document: dict[str, Any]) -> TableBlock:
    rows = []
    for entry in document["models"]:
        paper, accuracy, sizes = _paper_first(entry), entry["accuracy"], entry["sizes"]
        targets = sorted({row["target"] + (" (emulated)" if row["emulated"] else "") for row in entry["measurements"]
                          if row["source"] == "bench"})
        int8 = [row for row in entry["measurements"] if row["variant"] == "int8" and row["source"] == "bench"] or \
            [row for row in entry["measurements"] if row["variant"] == "int8"]
        fastest = min(int8, key=lambda row: row["p50_ms"]) if int8 else None
        rows.append([entry["model"], entry["artifact_id"], entry["dataset"], fmt(accuracy["fp32_top1"]),
                     fmt(accuracy["int8_top1"]), fmt(accuracy["drop_pp"]),
                     f"{fmt(paper['accuracy_pct'])} ({paper['dataset']}, {paper['table']})" if paper else DASH,
                     _mb(sizes["paper_style_bytes"]), fmt(paper["size_mb"], 3) if paper else DASH,
                     _time(fastest["p50_ms"], bool(fastest["emulated"])) if fastest else DASH,
                     f"{_where(fastest)}, {fastest['threads']} thread(s)" if fastest else DASH,
                     ", ".join(targets) or DASH])
    return TableBlock("At a glance: one row per artifact (top-1 on the host's eval set)",
                      ["model", "artifact", "dataset", "FP32 top-1 %", "INT8 top-1 %", "drop pp", "paper top-1 %",
                       "size MB", "paper size MB", "fastest INT8 p50 ms", "where", "benchmarked on"],
                      rows, role="overview")


HOST_COLUMNS = ["host", "model", "artifact", "profile", "CPU", "onnxruntime", "threads", "FP32 p50 ms", "INT8 p50 ms",
                "INT8 img/s", "INT8 agree %", "measured"]


def _hosts_view(document: dict[str, Any]) -> TableBlock | None:
    """Per host (a fleet's inventory name, else its address): the newest bench of each model there."""
    newest: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for entry in document["models"]:
        for row in entry["measurements"]:
            if row["source"] != "bench" or not row.get("host"):
                continue
            key = (row["host"], entry["model"])
            known = newest.get(key)
            if known is None or str(row["created"]) > str(known[0][1]["created"]):
                newest[key] = [(entry, row)]
            elif str(row["created"]) == str(known[0][1]["created"]):
                known.append((entry, row))
    if not newest:
        return None
    rows = []
    for (host, model), found in sorted(newest.items(), key=lambda item: item[0]):
        entry = found[0][0]
        for threads in sorted({row["threads"] for _, row in found}):
            variant = {row["variant"]: row for _, row in found if row["threads"] == threads}
            any_row = next(iter(variant.values()))
            emulated = bool(any_row["emulated"])
            int8 = variant.get("int8")
            rows.append([host, model, entry["artifact_id"], any_row["target"], any_row["cpu"], any_row["onnxruntime"],
                         threads, _time(variant["fp32"]["p50_ms"], emulated) if "fp32" in variant else DASH,
                         _time(int8["p50_ms"], emulated) if int8 else DASH,
                         Cell(fmt(int8["throughput_ips"], 1), emulated=emulated) if int8 else DASH,
                         fmt(int8["agreement_pct"]) if int8 else DASH, any_row["created"]])
    return TableBlock("Per host: the newest bench of each model on each host (fleet runs name hosts by inventory)",
                      HOST_COLUMNS, rows, role="hosts")


def _pareto_plots(document: dict[str, Any]) -> list[Plot]:
    by_target: dict[str, dict[str, Series]] = {}
    emulated: set[str] = set()
    benched = any(row["source"] == "bench" for entry in document["models"] for row in entry["measurements"])
    for entry in document["models"]:
        for row in entry["measurements"]:
            # the export's quick check only where nothing was benchmarked: one plot per place a person chose
            if row["top1"] is None or row["p50_ms"] is None or (benched and row["source"] != "bench"):
                continue
            where = _where(row)
            emulated |= {where} if row["emulated"] else set()
            series = by_target.setdefault(where, {}).setdefault(row["variant"], Series(row["variant"].upper(), []))
            series.points.append(Point(row["p50_ms"], row["top1"],
                                       f"{entry['model']} {row['variant']} {row['threads']} thread(s): "
                                       f"{row['p50_ms']:.3f} ms, {row['top1']:.2f} %",
                                       f"{entry['model']} {row['threads']}t"))
    plots = []
    for where, series in sorted(by_target.items()):
        mark = " (emulated)" if where in emulated else ""
        plots.append(Plot(scatter(f"top-1 vs p50 latency: {where}{mark}", f"p50 ms{mark}", "top-1 %",
                                  list(series.values()), role="pareto"),
                          f"each point a model, variant and thread count (t) measured on {where}{mark}; ringed and "
                          "dashed: the Pareto front (no other point is both faster and more accurate)"))
    return plots


def _size_plot(document: dict[str, Any]) -> Plot:
    newest: dict[str, dict[str, Any]] = {}
    for entry in document["models"]:
        newest.setdefault(entry["model"], entry)
    entries = list(newest.values())
    paper = [(_paper_first(entry) or {}).get("size_mb") for entry in entries]
    ours = [entry["sizes"]["paper_style_bytes"] / MB if entry["sizes"]["paper_style_bytes"] else None
            for entry in entries]
    return Plot(bars("model size: the paper's beside ours", "MB", [entry["model"] for entry in entries],
                     [("paper (state_dict)", paper), ("ours (state_dict)", ours),
                      ("ONNX FP32", [entry["sizes"]["onnx_fp32_bytes"] / MB for entry in entries]),
                      ("ONNX INT8", [entry["sizes"]["onnx_int8_bytes"] / MB for entry in entries])], role="sizes"),
                "size of a torch.save(state_dict) file as the papers measure it (ours: the checkpoint exported), "
                "and the ONNX files; — where the papers report no size")


def _thread_plots(document: dict[str, Any]) -> list[Plot]:
    plots = []
    groups: dict[str, dict[tuple[str, int], dict[str, float]]] = {}
    emulated: set[str] = set()
    for entry in document["models"]:
        for row in entry["measurements"]:
            if row["source"] != "bench":
                continue
            emulated |= {row["target"]} if row["emulated"] else set()
            key = (entry["model"], row["threads"])
            groups.setdefault(row["target"], {}).setdefault(key, {})[row["variant"]] = row["p50_ms"]
    for target, found in sorted(groups.items()):
        keys = sorted(found)
        mark = " (emulated)" if target in emulated else ""
        plots.append(Plot(bars(f"FP32 vs INT8 p50 per thread count: {target}{mark}", f"p50 ms{mark}",
                               [f"{model} {threads}t" for model, threads in keys],
                               [("FP32", [found[key].get("fp32") for key in keys]),
                                ("INT8", [found[key].get("int8") for key in keys])], role="threads"),
                          f"newest bench record per model on {target}{mark}; t = intra-op threads"))
    return plots


def report_blocks(document: dict[str, Any]) -> list[Block]:
    """The store report: overview, plots, then one section per artifact."""
    blocks: list[Block] = [Heading("Overview", 2, "overview"), _overview(document),
                           Notes(["top-1 is measured on the artifact's own eval set (its dataset, named per row); "
                                  "the papers' figures are on their datasets (CIFAR-10/100), so compare within a "
                                  "column with care",
                                  "times measured on an emulated target (qemu) are marked emulated: they say "
                                  "nothing about the board",
                                  "— : the records hold no such figure"]),
                           Heading("Plots", 2, "plots"), *_pareto_plots(document), _size_plot(document),
                           *_thread_plots(document)]
    hosts = _hosts_view(document)
    if hosts is not None:
        blocks[3:3] = [Heading("Hosts", 2, "hosts"), hosts]
    for sweep in document.get("sweeps", []):
        blocks += sweep_blocks(sweep, {entry["artifact_id"] for entry in document["models"]})
    for entry in document["models"]:
        blocks += _artifact_blocks(entry)
    return blocks


SWEEP_COLUMNS = ["trial", "state", "model", "depth", "width", "unit order", "method", "format", "activations",
                 "per-channel", "INT8 top-1 %", "p50 ms", "INT8 KiB", "Pareto", "artifact", "error"]


def sweep_blocks(sweep: dict[str, Any], shown: set[str]) -> list[Block]:
    """A sweep: every trial (a repeat of a point already run is counted, not listed) and its Pareto front."""
    front = set(sweep["pareto"])
    rows: list[list[Any]] = []
    points: dict[bool, list[Point]] = {True: [], False: []}
    repeats = 0
    for trial in sweep["trials"]:
        if trial["state"] == "PRUNED":
            repeats += 1
            continue
        params, values = trial["params"], trial.get("values") or {}
        artifact_id = Path(trial["artifact"]).name if trial.get("artifact") else None
        link = Cell(artifact_id, href=f"#a-{artifact_id}" if artifact_id in shown else None) if artifact_id else DASH
        rows.append([trial["number"], trial["state"], trial.get("model") or DASH, params.get("depth"),
                     params.get("width"), params.get("unit_order"), params.get("method"), params.get("format"),
                     params.get("activation_type"), params.get("per_channel"), values.get("top1_pct"),
                     fmt(values.get("p50_ms"), 3), values["int8_bytes"] / 1024 if values else None,
                     "yes" if trial["number"] in front else "no", link,
                     (trial.get("error") or DASH) if trial["state"] != "COMPLETE" else DASH])
        if values:
            on_front = trial["number"] in front
            points[on_front].append(Point(values["p50_ms"], values["top1_pct"],
                                          f"trial {trial['number']} {trial.get('model')}: {values['p50_ms']:.3f} ms, "
                                          f"{values['top1_pct']:.2f} %, {values['int8_bytes'] / 1024:.1f} KiB",
                                          f"#{trial['number']} {trial.get('model') or ''}"))
    target = next((t["details"].get("target") for t in sweep["trials"] if t.get("details", {}).get("target")), None)
    counts = sweep.get("counts", {})
    blocks: list[Block] = [
        Heading(f"Sweep {sweep['name']}", 2, f"sweep-{sweep['name']}"),
        Notes([f"{counts.get('COMPLETE', 0)} complete, {counts.get('FAIL', 0)} failed"
               + (f", {repeats} repeat(s) of points already run (not run again)" if repeats else "")
               + f"; study {sweep['storage']}",
               "objectives: INT8 top-1 on the artifact's eval set (up), INT8 p50 latency at batch 1 (down), "
               f"INT8 ONNX size (down), measured on {target or DASH}; the Pareto front is computed from the stored "
               "trials: no other trial is at least as good on all three and better on one"]),
        TableBlock(f"sweep {sweep['name']}: every trial", SWEEP_COLUMNS, rows or [[DASH] * len(SWEEP_COLUMNS)],
                   role="sweep-trials")]
    series = [Series(name, found) for name, found in (("Pareto front", points[True]), ("dominated", points[False]))
              if found]
    if series:
        blocks.append(Plot(scatter(f"sweep {sweep['name']}: top-1 vs p50 latency ({target or 'target'})",
                                   "INT8 p50 ms", "INT8 top-1 %", series, front=False, role="sweep-pareto"),
                           "each point a COMPLETE trial; 'Pareto front' over all three objectives (size too), "
                           "so a front point may look beaten here by a larger model"))
    return blocks


CSV_COLUMNS = ["model", "artifact_id", "dataset", "paper_top1_pct", "paper_dataset", "paper_table", "paper_size_mb",
               "fp32_top1_host", "int8_top1_host", "drop_pp", "paper_style_bytes", "onnx_fp32_bytes",
               "onnx_int8_bytes", "target", "source", "emulated", "cpu", "variant", "threads", "batch", "p50_ms",
               "p90_ms", "p99_ms", "throughput_ips", "peak_rss_mb", "top1_target", "agreement_pct", "macs",
               "gflops_p50", "gflops_p90", "gflops_p99", "pct_peak_p50", "pct_peak_p90", "pct_peak_p99",
               "peak_source", "peak_dtype", "peak_gops", "rounds", "record"]


def report_csv_rows(document: dict[str, Any]) -> list[list[Any]]:
    """One row per measurement, with its model's figures beside it."""
    rows = []
    for entry in document["models"]:
        paper, accuracy, sizes = _paper_first(entry) or {}, entry["accuracy"], entry["sizes"]
        for row in entry["measurements"]:
            gflops, percent = row["gflops"] or {}, row["pct_of_peak"] or {}
            rows.append([entry["model"], entry["artifact_id"], entry["dataset"], paper.get("accuracy_pct"),
                         paper.get("dataset"), paper.get("table"), paper.get("size_mb"), accuracy["fp32_top1"],
                         accuracy["int8_top1"], accuracy["drop_pp"], sizes["paper_style_bytes"],
                         sizes["onnx_fp32_bytes"], sizes["onnx_int8_bytes"], row["target"], row["source"],
                         row["emulated"], row["cpu"], row["variant"], row["threads"], row["batch"], row["p50_ms"],
                         row["p90_ms"], row["p99_ms"], row["throughput_ips"], row["peak_rss_mb"], row["top1"],
                         row["agreement_pct"], entry["macs"], gflops.get("p50"), gflops.get("p90"),
                         gflops.get("p99"), percent.get("p50"), percent.get("p90"), percent.get("p99"),
                         row["peak_source"], row.get("peak_dtype"), row.get("peak_value"), row["rounds"],
                         row["record"]])
    return rows


# --- --compare ---------------------------------------------------------------------------------

COMPARE_COLUMNS = ["model", "where", "variant", "threads", "batch", "A p50 ms", "A rounds", "B p50 ms", "B rounds",
                   "change ms", "change %", "noise ms", "noise from", "verdict", "A top-1 %", "B top-1 %"]


def compare_blocks(document: dict[str, Any]) -> list[Block]:
    rows = []
    for row in document["rows"]:
        emulated = bool(row["emulated"])
        flag = row["verdict"] if row["verdict"] in ("regression", "improvement") else None
        accuracy_flag = "regression" if row.get("top1_change") is not None and row["top1_change"] < 0 else None
        rows.append([row["model"], row["target"], row["variant"], row["threads"], row["batch"],
                     _time(row["a_p50_ms"], emulated), row["a_rounds"] or DASH, _time(row["b_p50_ms"], emulated),
                     row["b_rounds"] or DASH, Cell(fmt(row["change_ms"], 3), emulated, flag),
                     Cell(fmt(row["change_pct"], 1), emulated, flag), _time(row["noise_ms"], emulated),
                     row["noise_from"] or DASH, Cell(row["verdict"], flag=flag), fmt(row["a_top1"]),
                     Cell(fmt(row["b_top1"]), flag=accuracy_flag)])
    counts = document["counts"]
    return [Heading("A and B", 2, "sides"),
            TableBlock("what is compared", ["side", "path", "kind", "artifacts", "bench records"],
                       [[name, side["path"], side["kind"], side["artifacts"], side["records"]]
                        for name, side in (("A", document["a"]), ("B", document["b"]))], role="sides"),
            Heading("p50 latency and top-1, B against A", 2, "compare"),
            TableBlock(f"{counts.get('regression', 0)} regression(s), {counts.get('improvement', 0)} improvement(s), "
                       f"{counts.get('within noise', 0)} within noise", COMPARE_COLUMNS, rows, role="compare"),
            Notes(document["rule"])]


def compare_csv_rows(document: dict[str, Any]) -> list[list[Any]]:
    keys = ["model", "target", "emulated", "variant", "threads", "batch", "a_p50_ms", "a_rounds", "b_p50_ms",
            "b_rounds", "change_ms", "change_pct", "noise_ms", "noise_from", "verdict", "a_top1", "b_top1"]
    return [keys] + [[row.get(key) for key in keys] for row in document["rows"]]


# --- --paper ------------------------------------------------------------------------------------

PAPER_COLUMNS = ["model", "paper dataset", "paper top-1 %", "paper size MB", "paper s/epoch", "artifact",
                 "our dataset", "FP32 top-1 %", "INT8 top-1 %", "our size MB", "ONNX FP32 MB", "ONNX INT8 MB",
                 "our s/epoch", "INT8 p50 ms, fewest threads, per target"]


def paper_blocks(document: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    for table in document["tables"]:
        rows = []
        for row in table["rows"]:
            ours = row["ours"]
            latency: Sequence[dict[str, Any]] = ours["int8_p50"] if ours else ()
            rows.append([row["model"], row["dataset"], fmt(row["accuracy_pct"]), fmt(row["size_mb"], 3),
                         fmt(row["speed_s_per_epoch"], 1), ours["artifact_id"] if ours else DASH,
                         ours["dataset"] if ours else DASH, fmt(ours["fp32_top1"]) if ours else DASH,
                         fmt(ours["int8_top1"]) if ours else DASH, _mb(ours["paper_style_bytes"]) if ours else DASH,
                         _mb(ours["onnx_fp32_bytes"]) if ours else DASH, _mb(ours["onnx_int8_bytes"]) if ours else DASH,
                         fmt(ours["s_per_epoch"], 1) if ours else DASH,
                         Cell("; ".join(f"{item['target']} {item['p50_ms']:.3f} ({item['threads']}t)"
                                        for item in latency) or DASH,
                              emulated=any(item["emulated"] for item in latency))])
        blocks += [Heading(f"{table['table']} ({table['source']})", 2, table["table"].lower().replace(" ", "-")),
                   TableBlock(f"{table['table']}: the paper's columns, then ours", PAPER_COLUMNS, rows,
                              role="paper-table")]
    blocks.append(Notes(document["notes"]))
    return blocks


def paper_csv_rows(document: dict[str, Any]) -> list[list[Any]]:
    keys = ["table", "model", "dataset", "accuracy_pct", "size_mb", "speed_s_per_epoch", "artifact_id", "our_dataset",
            "fp32_top1", "int8_top1", "paper_style_bytes", "onnx_fp32_bytes", "onnx_int8_bytes", "s_per_epoch"]
    rows = [keys]
    for table in document["tables"]:
        for row in table["rows"]:
            ours = row["ours"] or {}
            rows.append([table["table"], row["model"], row["dataset"], row["accuracy_pct"], row["size_mb"],
                         row["speed_s_per_epoch"], ours.get("artifact_id"), ours.get("dataset"),
                         ours.get("fp32_top1"), ours.get("int8_top1"), ours.get("paper_style_bytes"),
                         ours.get("onnx_fp32_bytes"), ours.get("onnx_int8_bytes"), ours.get("s_per_epoch")])
    return rows
