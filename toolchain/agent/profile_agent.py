#!/usr/bin/env python3
"""Per-node profile agent: onnxruntime's own per-node timings of ONNX models, the same code here and on a target.

Target-side: stdlib + numpy + onnxruntime and its siblings (`common`, `bench_agent`) only, Python 3.5+ syntax
(checked by vermin in the tests); run by path from the agent folder, never imported by the host.

    python3 profile_agent.py --model fp32=model.fp32.onnx --model int8=model.int8.onnx \\
        --evalset evalset.npz --threads 1 --warmup 10 --runs 100 --output profile.json [--emulated] [--progress]

Per model: one session exactly as the benchmark agent opens it (same threads, onnxruntime's default graph
optimisation, ORT_ENABLE_ALL), with ``SessionOptions.enable_profiling`` on and the optimised graph saved
(``optimized_model_filepath``): the node names in the trace are those of the graph onnxruntime really runs,
after its fusions and layout changes, and that graph is read here (a small protobuf reader: no onnx package
on a target) so that the host can map each profiled node back to the file's nodes. ``warmup`` untimed runs,
then ``runs`` runs on eval images (batch 1 by default). The trace (onnxruntime's JSON, one event per node
per run) is parsed here: per node, ``time_us`` (the mean of its fastest 90 % kernel times over the timed
runs; the warm-up runs' events are dropped), with the median, mean, min and total. Only small JSON comes
back. Profiling costs time of its own around every kernel: a profiled run is slower than a benched one.

The result (schema "toolchain.profile-agent/1") is written atomically to --output. On failure: one line
``ERROR {"type": ..., "message": ...}`` on stderr and exit status 1 (the benchmark agent's protocol).
"""

import argparse
import json
import os
import shutil
import sys
import time

import bench_agent
import common

SCHEMA = "toolchain.profile-agent/1"
KERNEL_SUFFIX = "_kernel_time"

# --- a minimal reader of the ONNX protobuf: the graph's nodes and initializer names ------------------------
# ModelProto.graph = 7; GraphProto.node = 1, initializer = 5, input = 11, output = 12;
# NodeProto.input = 1, output = 2, name = 3, op_type = 4, domain = 7; TensorProto.name = 8; ValueInfoProto.name = 1


def _varint(data, position):
    result, shift = 0, 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _fields(data, start, end):
    """(field number, start, end) of every length-delimited field in data[start:end]; other fields skipped."""
    position = start
    while position < end:
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, position = _varint(data, position)
        elif wire == 1:
            position += 8
        elif wire == 2:
            length, position = _varint(data, position)
            yield number, position, position + length
            position += length
        elif wire == 5:
            position += 4
        else:
            raise ValueError("unsupported protobuf wire type {}".format(wire))


def _text(data, start, end):
    return bytes(data[start:end]).decode("utf-8", "replace")


def _named(data, start, end, field):
    for number, low, high in _fields(data, start, end):
        if number == field:
            return _text(data, low, high)
    return ""


def read_graph(path):
    """The main graph of an ONNX file: nodes (name, op_type, domain, inputs, outputs), initializer, input and
    output names."""
    with open(path, "rb") as handle:
        data = memoryview(handle.read())
    graph = None
    for number, low, high in _fields(data, 0, len(data)):
        if number == 7:
            graph = (low, high)
    if graph is None:
        raise bench_agent.AgentError("{} has no graph".format(path))
    nodes, initializers, inputs, outputs = [], [], [], []
    for number, low, high in _fields(data, graph[0], graph[1]):
        if number == 1:
            node = {"name": "", "op_type": "", "domain": "", "inputs": [], "outputs": []}
            for field, start, end in _fields(data, low, high):
                if field == 1:
                    node["inputs"].append(_text(data, start, end))
                elif field == 2:
                    node["outputs"].append(_text(data, start, end))
                elif field == 3:
                    node["name"] = _text(data, start, end)
                elif field == 4:
                    node["op_type"] = _text(data, start, end)
                elif field == 7:
                    node["domain"] = _text(data, start, end)
            nodes.append(node)
        elif number == 5:
            initializers.append(_named(data, low, high, 8))
        elif number == 11:
            inputs.append(_named(data, low, high, 1))
        elif number == 12:
            outputs.append(_named(data, low, high, 1))
    return {"nodes": nodes, "initializers": initializers, "inputs": inputs, "outputs": outputs}


# --- the trace ------------------------------------------------------------------------------------------------


def node_times(trace_path, warmup):
    """Per node of the trace, in the order it first ran: op, provider and kernel-time statistics (microseconds)
    over the timed runs; and the per-run totals onnxruntime measured itself (model_run, milliseconds)."""
    with open(trace_path) as handle:
        events = json.load(handle)
    events = sorted((event for event in events if isinstance(event, dict)), key=lambda event: event.get("ts", 0))
    order, times, facts, runs = [], {}, {}, []
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Session" and name == "model_run":
            runs.append(event.get("dur", 0) / 1000.0)
        if event.get("cat") != "Node" or not name.endswith(KERNEL_SUFFIX):
            continue
        node = name[:-len(KERNEL_SUFFIX)]
        if node not in times:
            order.append(node)
            times[node] = []
            args = event.get("args") or {}
            facts[node] = {"op_type": args.get("op_name", ""), "provider": args.get("provider", "")}
        times[node].append(float(event.get("dur", 0)))
    nodes = []
    for node in order:
        kept = sorted(times[node][warmup:] or times[node])
        middle = len(kept) // 2
        median = kept[middle] if len(kept) % 2 else (kept[middle - 1] + kept[middle]) / 2.0
        # onnxruntime stamps whole microseconds: the median of a 3 us kernel is 2, 3 or 4; the mean of the
        # fastest 90 % keeps sub-microsecond resolution and drops the runs a preemption stretched
        fastest = kept[:max(1, int(len(kept) * 0.9))]
        entry = {"name": node, "calls": len(kept), "time_us": sum(fastest) / len(fastest), "median_us": median,
                 "mean_us": sum(kept) / len(kept), "min_us": kept[0], "total_us": sum(kept)}
        entry.update(facts[node])
        nodes.append(entry)
    return nodes, runs[warmup:]


def profile_model(variant, path, images, threads, batch, warmup, runs, report):
    """One model's per-node profile, in this process, with its optimised graph."""
    scratch = common.scratch_folder("profile")
    common.when_caller_gone(lambda: shutil.rmtree(scratch, ignore_errors=True))
    optimized = os.path.join(scratch, "optimized.onnx")
    levels = []

    def configure(options):
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(scratch, "trace")
        options.optimized_model_filepath = optimized
        levels.append(str(options.graph_optimization_level))

    try:
        session = bench_agent.open_session(path, threads, configure)
        input_name, _, fixed = bench_agent.input_of(session, batch)
        feeds = [{input_name: chunk} for chunk in bench_agent.batches_of(images, fixed or batch)]
        latencies, _ = bench_agent.timed_runs(session, feeds, warmup, runs, 0.0, report)
        trace = session.end_profiling()
        nodes, model_runs = node_times(trace, warmup)
        graph = read_graph(optimized) if os.path.isfile(optimized) else None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"variant": variant, "model_file": os.path.basename(path), "model_sha256": common.sha256_file(path),
            "threads": threads, "batch": fixed or batch, "warmup": warmup, "runs": len(latencies),
            "providers": list(session.get_providers()), "graph_optimization_level": levels[0],
            "latency_ms": bench_agent.latency_summary(latencies),
            "model_run_ms": bench_agent.latency_summary(model_runs) if model_runs else None,
            "nodes": nodes, "node_total_us": sum(node["time_us"] for node in nodes), "optimized_graph": graph}


def arguments(argv):
    parser = argparse.ArgumentParser(description="Per-node onnxruntime profile of ONNX models (toolchain).")
    parser.add_argument("--model", action="append", default=[], help="VARIANT=PATH (repeat)")
    parser.add_argument("--evalset", required=True, help=".npz with images (float32 NCHW) and labels")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--output", required=True, help="result JSON (written atomically)")
    parser.add_argument("--emulated", action="store_true", help="label the target as emulated (qemu)")
    parser.add_argument("--progress", action="store_true", help="PROGRESS lines on stderr")
    return parser.parse_args(argv)


def run(options):
    models = bench_agent.parse_models(options.model)
    if not models:
        raise bench_agent.AgentError("no --model given")
    if min(options.threads, options.batch, options.runs) < 1 or options.warmup < 0:
        raise bench_agent.AgentError("--threads, --batch and --runs must be at least 1, --warmup at least 0")
    images, _ = bench_agent.load_evalset(options.evalset)
    results = []
    for variant, path in models:
        def report(phase, done, total, variant=variant):
            if options.progress:
                bench_agent.emit("PROGRESS", {"variant": variant, "threads": options.threads, "phase": phase,
                                              "done": done, "total": total})

        results.append(profile_model(variant, path, images, options.threads, options.batch, options.warmup,
                                     options.runs, report))
    common.write_json_atomic(options.output, {
        "schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": bench_agent.target_facts(options.emulated),
        "settings": {"threads": options.threads, "batch": options.batch, "warmup": options.warmup,
                     "runs": options.runs, "evalset": os.path.basename(options.evalset)},
        "results": results})


def main(argv=None):
    options = arguments(sys.argv[1:] if argv is None else argv)
    common.end_with_caller()
    try:
        run(options)
    except Exception as exc:  # every failure ends as one ERROR line and exit status 1
        bench_agent.emit("ERROR", {"type": type(exc).__name__, "message": str(exc)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
