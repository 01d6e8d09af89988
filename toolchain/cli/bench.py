"""`toolchain bench`: time an artifact's FP32 and INT8 models with the benchmark agent.

``--target local`` (the default) runs the agent (toolchain/remote/agent/bench_agent.py) in a local
subprocess against the artifact folder; any other target is a profile under targets/ (or --host),
where the same agent runs over SSH (toolchain.cli.deploy.remote_bench). Same protocol, same JSON
schema; the result is stored beside the manifest in bench/<target>-<UTC time>.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from toolchain.cli.options import DEFAULT_ARTIFACTS, ArtifactsOption, HostOption, JsonOption, OptionalModelOption
from toolchain.cli.output import emit_json, info, progress, table

LOCAL = "local"
# local runs; a target's defaults are its profile's [bench] table
LOCAL_DEFAULTS = {"threads": "1,2", "batch": 1, "warmup": 20, "runs": 200}

BenchTargetOption = Annotated[str, typer.Option(
    "--target", "-t", help="Where to measure: 'local' (this machine, default) or a target profile "
    "(bluebox2, emulated, a target.toml path).")]


def _artifact_folder(artifact: Path | None, model: str | None, artifacts: Path) -> Path:
    from toolchain.artifacts import ArtifactStore
    from toolchain.errors import UsageError

    if artifact is not None:
        return artifact
    if model is None:
        raise UsageError("pass --artifact FOLDER, or --model NAME for its newest artifact",
                         "e.g. toolchain bench --model hps-06-0.5x (make one with `toolchain export`)")
    return ArtifactStore(artifacts).latest(model)


def bench(
    model: OptionalModelOption = None,
    artifact: Annotated[Optional[Path], typer.Option(
        "--artifact", "-a", help="Artifact folder (artifacts/<model>/<id>/); default: the model's newest.")] = None,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    target: BenchTargetOption = LOCAL,
    host: HostOption = None,
    threads: Annotated[Optional[str], typer.Option(
        "--threads", help="Intra-op thread counts, e.g. 1,2 (default: 1,2 locally, the profile's on a target).")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", help="Images per run (default 1).", min=1)] = None,
    warmup: Annotated[Optional[int], typer.Option(
        "--warmup", help="Untimed runs first (default: 20 locally, the profile's on a target).", min=0)] = None,
    runs: Annotated[Optional[int], typer.Option(
        "--runs", help="Timed runs, at least (default: 200 locally, the profile's on a target).", min=1)] = None,
    min_time: Annotated[Optional[float], typer.Option(
        "--min-time", help="Keep timing until this many seconds of runs (default 0: just --runs).", min=0)] = None,
    json_output: JsonOption = False,
) -> None:
    """p50/p90/p99 latency, throughput, peak RSS and eval accuracy of FP32 and INT8, side by side."""
    from toolchain.benchmark import BenchSettings, parse_threads

    if target != LOCAL or host is not None:
        from toolchain.cli.deploy import remote_bench

        remote_bench(artifact, model, artifacts, None if target == LOCAL else target, host, threads=threads,
                     warmup=warmup, runs=runs, batch=batch, min_time=min_time, json_output=json_output)
        return
    from toolchain.benchmark import bench_local
    from toolchain.report import bench_notes, bench_table

    folder = _artifact_folder(artifact, model, artifacts)
    settings = BenchSettings(threads=parse_threads(threads or LOCAL_DEFAULTS["threads"]),
                             batch=batch or LOCAL_DEFAULTS["batch"],
                             warmup=LOCAL_DEFAULTS["warmup"] if warmup is None else warmup,
                             runs=runs or LOCAL_DEFAULTS["runs"], min_time_s=min_time or 0.0)
    info(f"benchmarking {folder} on this machine (local): threads {','.join(map(str, settings.threads))}, "
         f"batch {settings.batch}, {settings.warmup} warm-up + {settings.runs} timed runs per model")
    with progress() as bar:
        task = bar.add_task("agent", total=None, status="")

        def on_progress(event: dict) -> None:
            bar.update(task, description=f"{event.get('variant', '')} {event.get('threads', '')} thread(s)",
                       completed=event.get("done"), total=event.get("total"), status=event.get("phase", ""))

        run = bench_local(folder, settings, on_progress)
    if json_output:
        emit_json({**run.document, "stored": str(run.path)})
        return
    summary = bench_table(run.document, run.agreements)
    table(summary.title, summary.columns, summary.rows, right_align=summary.right_align)
    for line in bench_notes(run.document):
        info(line)
    info(f"stored {run.path}")


def register(app: typer.Typer) -> None:
    """Add `bench` to the toolchain app."""
    app.command("bench")(bench)
