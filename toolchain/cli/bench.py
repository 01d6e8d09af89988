"""`toolchain bench`: time an artifact's FP32 and INT8 models with the benchmark agent.

``--target local`` (the default) runs the agent on this machine against the artifact folder; any other
target is a profile under targets/ (or --host), where the same agent runs over SSH against the
deployed artifact. One flow for both (toolchain.bench.system), same protocol, same JSON schema; the
result is stored beside the manifest in bench/<target>-<UTC time>.json.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from toolchain.cli.common import agent_progress, artifact_folder, show_bench, warn_disagreement
from toolchain.cli.options import (DEFAULT_ARTIFACTS, ArtifactsOption, Connection, JsonOption, OptionalModelOption,
                                   connects)
from toolchain.cli.output import emit_json, info

LOCAL = "local"
BENCH_EXAMPLE = "toolchain bench --model hps-06-0.5x"

BenchTargetOption = Annotated[str, typer.Option(
    "--target", "-t", help="Where to measure: 'local' (this machine, default) or a target profile "
    "(linux, bluebox2, emulated, a target.toml path).")]


@connects(BenchTargetOption, LOCAL)
def bench(
    connection: Connection,
    model: OptionalModelOption = None,
    artifact: Annotated[Optional[Path], typer.Option(
        "--artifact", "-a", help="Artifact folder (artifacts/<model>/<id>/); default: the model's newest.")] = None,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
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
    from toolchain.bench.settings import LOCAL_DEFAULTS, parse_threads
    from toolchain.bench.system import LocalSystem, TargetSystem
    from toolchain.bench.system import bench as run_bench

    overrides = dict(threads=parse_threads(threads) if threads else None, batch=batch, warmup=warmup, runs=runs,
                     min_time_s=min_time)
    local = connection.target == LOCAL and connection.host is None
    if local:
        folder = artifact_folder(artifact, model, artifacts, BENCH_EXAMPLE)
        system, settings = LocalSystem(), LOCAL_DEFAULTS.with_overrides(**overrides)
        info(f"benchmarking {folder} on this machine (local): threads {','.join(map(str, settings.threads))}, "
             f"batch {settings.batch}, {settings.warmup} warm-up + {settings.runs} timed runs per model")
    else:
        # `--host X` alone: the default profile, reached at X
        profile = replace(connection, target=None if connection.target == LOCAL else connection.target).profile()
        folder = artifact_folder(artifact, model, artifacts, BENCH_EXAMPLE, target=profile)
        system = TargetSystem(profile, accept_new_host_key=connection.accept_new_host_key,
                              break_lock=connection.break_lock)
        settings = profile.bench.with_overrides(**overrides)
    with agent_progress() as on_progress:
        run = run_bench(system, folder, settings, on_message=(lambda _: None) if local else info,
                        on_progress=on_progress)
    if json_output:
        emit_json({**run.document, "stored": str(run.path)})
    else:
        show_bench(run, with_artifact=not local)
        info(f"stored {run.path}")
    if not local:
        warn_disagreement(run)


def register(app: typer.Typer) -> None:
    """Add `bench` to the toolchain app."""
    app.command("bench")(bench)
