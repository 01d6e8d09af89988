#!/usr/bin/env python3
"""Benchmark agent: times ONNX models with onnxruntime, the same code on the host and on the target.

Target-side: stdlib + numpy (>= 1.13) + onnxruntime (>= 1.6) and its sibling `common` only, Python
3.5+ syntax (checked by vermin in the tests). It runs from the agent folder the host installs once
per version (on this machine: from toolchain/agent itself); the host never imports it.

    python3 bench_agent.py --model fp32=model.fp32.onnx --model int8=model.int8.onnx \\
        --evalset evalset.npz --threads 1,2 --batch 1 --warmup 20 --runs 200 --min-time 0 \\
        --output result.json [--emulated] [--progress]

Protocol (per model and thread count): one session; ``warmup`` untimed runs; then timed runs, at
least ``runs`` of them and until ``min-time`` seconds of timed runs have passed; latency is the wall
time of one ``session.run`` on one batch (time.perf_counter); then top-1 accuracy and the argmax of
every eval image (dataset order). Batches cycle through the eval images.

Each (model, threads) measurement runs in a fresh worker process (this same file with --worker), so
``peak_rss_mb`` (getrusage ru_maxrss at the end of the worker) is that measurement's own peak:
interpreter + numpy + onnxruntime + eval set + session + runs. ``rss_before_session_mb`` is the same
process's peak just before the session was created (onnxruntime imported, eval set loaded): the
difference is the session's share.

The result (schema "toolchain.bench/1") is written atomically to --output; exit status 0. With
--progress, one line per step on stderr: ``PROGRESS {json}``. On failure: one line
``ERROR {"type": ..., "message": ...}`` on stderr and exit status 1.
"""

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time

import common

SCHEMA = "toolchain.bench/1"
EVAL_BATCH = 64
PROGRESS_STEPS = 20


class AgentError(Exception):
    """A failure the caller can act on (bad file, bad arguments, model that does not load)."""


def emit(kind, payload):
    """One machine-readable line on stderr (PROGRESS or ERROR)."""
    sys.stderr.write(kind + " " + json.dumps(payload, sort_keys=True) + "\n")
    sys.stderr.flush()


def target_facts(emulated):
    """What the measurement ran on."""
    import numpy
    import onnxruntime

    return {"hostname": socket.gethostname(), "arch": platform.machine(), "cpu_model": common.cpu_model(),
            "cores": os.cpu_count(), "python": platform.python_version(), "numpy": numpy.__version__,
            "onnxruntime": onnxruntime.__version__, "os": common.os_name(),
            "glibc": common.glibc_version() or "", "emulated": bool(emulated)}


def peak_rss_mb():
    import resource

    # ru_maxrss is in KiB on Linux (bytes on macOS, which is not a target)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_evalset(path):
    import numpy

    try:
        data = numpy.load(path, allow_pickle=False)
        images = numpy.ascontiguousarray(data["images"], dtype=numpy.float32)
        labels = numpy.asarray(data["labels"]).astype(numpy.int64)
    except KeyError as exc:
        raise AgentError("eval set {} has no {} array".format(path, exc))
    except (IOError, OSError, ValueError) as exc:
        raise AgentError("eval set {} is not a readable .npz file: {}".format(path, exc))
    if images.ndim != 4 or images.shape[0] == 0 or labels.shape != (images.shape[0],):
        raise AgentError("eval set {}: images {} and labels {} do not fit (N x C x H x W and N)".format(
            path, list(images.shape), list(labels.shape)))
    return images, labels


def open_session(path, threads, configure=None):
    """A CPU session with `threads` intra-op threads and onnxruntime's default graph optimisation (ORT_ENABLE_ALL).

    `configure(options)` may set more (the profile agent: profiling, the optimised graph's file).
    """
    try:
        return common.cpu_session(path, threads, configure)
    except Exception as exc:  # onnxruntime raises its own exception types, which differ between versions
        raise AgentError("onnxruntime cannot load {}: {}".format(path, str(exc).strip().splitlines()[0][:300]))


def batches_of(images, batch):
    """Contiguous batches cycling through the images (slicing is done before timing starts)."""
    import numpy

    count = images.shape[0]
    cycles = [numpy.ascontiguousarray(numpy.take(images, range(start, start + batch), axis=0, mode="wrap"))
              for start in range(0, count, batch)]
    return cycles


def percentile(sorted_values, fraction):
    """Linear-interpolated percentile of sorted values (numpy.percentile's default)."""
    position = (len(sorted_values) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def latency_summary(seconds):
    """p50/p90/p99/mean/std/min/max in milliseconds."""
    values = sorted(value * 1000.0 for value in seconds)
    mean = sum(values) / len(values)
    variance = sum((value - mean) ** 2 for value in values) / len(values)
    return {"p50": percentile(values, 0.50), "p90": percentile(values, 0.90), "p99": percentile(values, 0.99),
            "mean": mean, "std": variance ** 0.5, "min": values[0], "max": values[-1]}


def timed_runs(session, feeds, warmup, runs, min_time, report=None):
    """The timed loop: warm-up, then at least `runs` runs and at least `min_time` seconds of them.

    Returns (per-run seconds, wall seconds of the whole timed loop including its bookkeeping).
    """
    clock = time.perf_counter
    run = session.run
    step = max(1, runs // PROGRESS_STEPS)
    for index in range(warmup):
        run(None, feeds[index % len(feeds)])
        if report is not None and (index + 1) % max(1, warmup // PROGRESS_STEPS) == 0:
            report("warmup", index + 1, warmup)
    latencies = []
    append = latencies.append
    total = 0.0
    count = 0
    started = clock()
    while count < runs or total < min_time:
        feed = feeds[count % len(feeds)]
        begin = clock()
        run(None, feed)
        elapsed = clock() - begin
        append(elapsed)
        total += elapsed
        count += 1
        if report is not None and count % step == 0:
            report("timing", count, max(runs, count))
    return latencies, clock() - started


def predictions_of(session, input_name, images, batch):
    """Argmax per image in dataset order."""
    import numpy

    answers = []
    for start in range(0, images.shape[0], batch):
        logits = session.run(None, {input_name: images[start:start + batch]})[0]
        answers.append(numpy.asarray(logits).argmax(axis=1))
    return numpy.concatenate(answers).astype(numpy.int64)


def input_of(session, batch):
    """The model's input name and shape, after checking the batch size fits it."""
    model_input = session.get_inputs()[0]
    shape = list(model_input.shape)
    fixed = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    if fixed is not None and fixed != batch:
        raise AgentError("the model's batch axis is fixed at {}; run with --batch {}".format(fixed, fixed))
    return model_input.name, [dim if isinstance(dim, int) else None for dim in shape], fixed


def measure(variant, path, evalset, threads, batch, warmup, runs, min_time, progress):
    """One (model, threads) measurement in this process: the result entry of the schema."""
    import onnxruntime  # noqa: F401  (imported before the baseline, so the session's share shows)

    images, labels = load_evalset(evalset)
    rss_before = peak_rss_mb()
    load_started = time.perf_counter()
    session = open_session(path, threads)
    load_seconds = time.perf_counter() - load_started
    input_name, shape, fixed = input_of(session, batch)
    if len(shape) != images.ndim or any(dim is not None and dim != size
                                        for dim, size in zip(shape[1:], images.shape[1:])):
        raise AgentError("eval images are {} but {} takes {}".format(
            list(images.shape[1:]), os.path.basename(path), shape[1:]))

    def report(phase, done, total):
        if progress:
            emit("PROGRESS", {"variant": variant, "threads": threads, "phase": phase, "done": done, "total": total})

    feeds = [{input_name: chunk} for chunk in batches_of(images, batch)]
    latencies, wall = timed_runs(session, feeds, warmup, runs, min_time, report)
    report("accuracy", 0, int(images.shape[0]))
    predicted = predictions_of(session, input_name, images, fixed or max(batch, EVAL_BATCH))
    report("accuracy", int(images.shape[0]), int(images.shape[0]))
    correct = int((predicted == labels).sum())
    return {"variant": variant, "model_file": os.path.basename(path), "model_sha256": common.sha256_file(path),
            "model_bytes": os.path.getsize(path), "threads": threads, "batch": batch,
            "providers": list(session.get_providers()), "input": {"name": input_name, "shape": shape},
            "latency_ms": latency_summary(latencies), "runs": len(latencies), "warmup": warmup,
            "timed_s": sum(latencies), "loop_wall_s": wall, "load_s": load_seconds,
            "throughput_ips": batch * len(latencies) / sum(latencies),
            "peak_rss_mb": peak_rss_mb(), "rss_before_session_mb": rss_before,
            "accuracy": {"top1": 100.0 * correct / labels.shape[0], "count": int(labels.shape[0])},
            "predictions": [int(value) for value in predicted]}


def parse_models(values):
    models = []
    for value in values:
        variant, separator, path = value.partition("=")
        if not separator or not variant or not path:
            raise AgentError("--model takes VARIANT=PATH, got {!r}".format(value))
        if not os.path.isfile(path):
            raise AgentError("model file {} not found".format(path))
        models.append((variant, path))
    if len(set(variant for variant, _ in models)) != len(models):
        raise AgentError("each --model needs its own variant name")
    return models


def parse_threads(text):
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise AgentError("--threads takes positive integers separated by commas, got {!r}".format(text))
    return counts


def arguments(argv):
    parser = argparse.ArgumentParser(description="Time ONNX models with onnxruntime (toolchain benchmark agent).")
    parser.add_argument("--model", action="append", default=[], help="VARIANT=PATH (repeat)")
    parser.add_argument("--evalset", required=True, help=".npz with images (float32 NCHW) and labels")
    parser.add_argument("--threads", default="1", help="intra-op thread counts, e.g. 1,2")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--min-time", type=float, default=0.0, help="keep timing for at least this many seconds")
    parser.add_argument("--output", required=True, help="result JSON (written atomically)")
    parser.add_argument("--emulated", action="store_true", help="label the target as emulated (qemu)")
    parser.add_argument("--progress", action="store_true", help="PROGRESS lines on stderr")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_worker(options):
    """Measure one (model, threads) in this process; write the entry, or the error, to --output."""
    variant, _, path = options.worker.partition("=")
    try:
        entry = measure(variant, path, options.evalset, int(options.threads), options.batch, options.warmup,
                        options.runs, options.min_time, options.progress)
    except Exception as exc:  # reported to the parent, which reports it to the caller
        entry = {"error": {"type": type(exc).__name__, "message": str(exc), "variant": variant,
                           "threads": int(options.threads)}}
    common.write_json_atomic(options.output, entry)
    return 1 if "error" in entry else 0


def run_measurements(options, models, thread_counts, scratch):
    """Every (model, threads) in its own worker process, in order; their result entries."""
    results = []
    for variant, path in models:
        for threads in thread_counts:
            output = os.path.join(scratch, "{}-{}.json".format(variant, threads))
            command = [sys.executable, os.path.abspath(__file__), "--worker", variant + "=" + os.path.abspath(path),
                       "--evalset", os.path.abspath(options.evalset), "--threads", str(threads),
                       "--batch", str(options.batch), "--warmup", str(options.warmup), "--runs", str(options.runs),
                       "--min-time", repr(options.min_time), "--output", output]
            if options.progress:
                command.append("--progress")
            code = subprocess.call(command)
            if not os.path.isfile(output):
                raise AgentError("the worker measuring {} with {} thread(s) died (exit status {})".format(
                    variant, threads, code))
            with open(output) as handle:
                entry = json.load(handle)
            if "error" in entry:
                raise AgentError("{} with {} thread(s): {}".format(variant, threads, entry["error"]["message"]))
            results.append(entry)
    return results


def run(options):
    models = parse_models(options.model)
    if not models:
        raise AgentError("no --model given")
    thread_counts = parse_threads(options.threads)
    for name, value in (("--batch", options.batch), ("--runs", options.runs)):
        if value < 1:
            raise AgentError("{} must be at least 1".format(name))
    if options.warmup < 0 or options.min_time < 0:
        raise AgentError("--warmup and --min-time must not be negative")
    _, labels = load_evalset(options.evalset)
    output_folder = os.path.dirname(os.path.abspath(options.output))
    if not os.path.isdir(output_folder):
        raise AgentError("output folder {} does not exist".format(output_folder))
    scratch = common.scratch_folder("bench")
    common.when_caller_gone(lambda: shutil.rmtree(scratch, ignore_errors=True))
    try:
        results = run_measurements(options, models, thread_counts, scratch)
    finally:
        for name in os.listdir(scratch):
            os.unlink(os.path.join(scratch, name))
        os.rmdir(scratch)
    document = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": target_facts(options.emulated),
        "settings": {"batch": options.batch, "warmup": options.warmup, "runs": options.runs,
                     "min_time_s": options.min_time, "threads": thread_counts,
                     "evalset": {"file": os.path.basename(options.evalset),
                                 "sha256": common.sha256_file(options.evalset), "count": int(labels.shape[0])},
                     "peak_rss": "per measurement: a fresh worker process per (model, threads)"},
        "results": results,
    }
    common.write_json_atomic(options.output, document)


def main(argv=None):
    options = arguments(sys.argv[1:] if argv is None else argv)
    common.end_with_caller()  # the workers too: they share this stderr
    if options.worker is not None:
        return run_worker(options)
    try:
        run(options)
    except Exception as exc:  # every failure ends as one ERROR line and exit status 1
        emit("ERROR", {"type": type(exc).__name__, "message": str(exc)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
