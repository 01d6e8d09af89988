"""`toolchain sweep run|show`: a design-space sweep (Optuna on Ray), and its stored trials and Pareto front.

Progress (one line per trial started, finished or failed) goes to stderr; the trial table, or with
--json the sweep's summary, to stdout.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from toolchain.cli.bench import LOCAL, BenchTargetOption
from toolchain.cli.options import (DEFAULT_ARTIFACTS, ArtifactsOption, Connection, DataDirOption, JsonOption,
                                   connects)
from toolchain.cli.output import emit_json, info, table, warn

app = typer.Typer(help="Design-space sweeps: depth x width x unit order x quantization, Optuna trials on Ray.",
                  no_args_is_help=True)
SpaceArgument = Annotated[Path, typer.Argument(help="The sweep file (TOML): space, budget, export and bench settings.")]


def _show_event(kind: str, data: dict[str, Any]) -> None:
    if kind == "recovered":
        info(f"trial(s) {', '.join(map(str, data['numbers']))} were running when the sweep stopped: "
             "recorded as interrupted, their parameters queued again")
    elif kind == "started":
        info(f"trial {data['number']} started: {data['model']} {_params(data['params'])}")
    elif kind == "finished":
        values = data["values"]
        info(f"trial {data['number']} done: {data['model']}: INT8 top-1 {values['top1_pct']:.2f} %, "
             f"p50 {values['p50_ms']:.3f} ms, {values['int8_bytes'] / 1024:.1f} KiB")
    elif kind == "failed":
        warn(f"trial {data['number']} failed ({data['model']}): {data['error']}")
    elif kind == "stuck":
        warn(f"the sampler proposed only points already run {data['repeats']} times in a row: stopping")


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in params.items() if key not in ("depth", "width"))


def _show_summary(summary: dict[str, Any]) -> None:
    front = set(summary["pareto"])
    rows = []
    for trial in summary["trials"]:
        if trial["state"] == "PRUNED":  # a repeat of a point already run: nothing ran
            continue
        values = trial["values"] or {}
        rows.append([trial["number"], trial["state"], trial["model"] or "—", trial["params"].get("method"),
                     trial["params"].get("format"), trial["params"].get("activation_type"),
                     f"{values['top1_pct']:.2f}" if values else "—", f"{values['p50_ms']:.3f}" if values else "—",
                     f"{values['int8_bytes'] / 1024:.1f}" if values else "—",
                     "yes" if trial["number"] in front else "",
                     (trial["error"] or "")[:80] if trial["state"] != "COMPLETE" else ""])
    counts = summary["counts"]
    table(f"sweep {summary['name']}: {counts['COMPLETE']} complete, {counts['FAIL']} failed; "
          f"Pareto front (top-1 up, latency and size down): trials {', '.join(map(str, summary['pareto'])) or '—'}",
          ["trial", "state", "model", "method", "format", "activations", "INT8 top-1 %", "p50 ms", "INT8 KiB",
           "Pareto", "error"], rows, right_align=("trial", "INT8 top-1 %", "p50 ms", "INT8 KiB"))


@connects(BenchTargetOption, LOCAL)
def run(
    connection: Connection,
    space: SpaceArgument,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    data_dir: DataDirOption = None,
    workers: Annotated[int, typer.Option("--workers", help="Trials at once (Ray tasks of one CPU each).", min=1)] = 2,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", help="An existing Ray cluster (e.g. 127.0.0.1:6379 or auto); default: a local Ray of "
        "--workers CPUs. Its nodes need this package and the --artifacts folder at the same path.")] = None,
    trials: Annotated[Optional[int], typer.Option(
        "--trials", help="Trials in all (complete or failed), overriding sweep.trials.", min=1)] = None,
    json_output: JsonOption = False,
) -> None:
    """Run a sweep, or continue it: rerunning the same command never runs a finished trial again."""
    from toolchain.sweep.space import load_space
    from toolchain.sweep.study import run_sweep

    spec = load_space(space)
    if trials is not None:
        spec = replace(spec, trials=trials)
    system, prepare = _system(connection)
    info(f"sweep {spec.name}: {spec.size} point(s) in the space, {spec.trials} trial(s), sampler {spec.sampler}, "
         f"{workers} worker(s) on {'Ray at ' + ray_address if ray_address else 'a local Ray'}, latency on "
         f"{system.name}" + (f" ({system.profile.address})" if hasattr(system, "profile") else ""))
    outcome = run_sweep(spec, artifacts, system, workers=workers, ray_address=ray_address, data_dir=data_dir,
                        prepare=prepare, on_event=_show_event)
    info(f"{outcome.ran} trial(s) run now; the study: {outcome.folder / 'study.db'}")
    if json_output:
        emit_json(outcome.summary)
    else:
        _show_summary(outcome.summary)


def _system(connection: Connection) -> tuple[Any, Any]:
    from toolchain.bench.system import LocalSystem, TargetSystem

    if connection.target == LOCAL and connection.host is None:
        return LocalSystem(), lambda folder: None
    from toolchain.remote.deploy import deploy

    profile = replace(connection, target=None if connection.target == LOCAL else connection.target).profile()

    def prepare(folder: Path) -> None:
        deploy(profile, folder, accept_new_host_key=connection.accept_new_host_key, break_lock=connection.break_lock)

    return TargetSystem(profile, accept_new_host_key=connection.accept_new_host_key,
                        break_lock=connection.break_lock), prepare


def show(
    space: SpaceArgument,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    json_output: JsonOption = False,
) -> None:
    """Every stored trial of a sweep and its Pareto front, read from the study (and sweep.json rewritten)."""
    from toolchain.sweep.space import load_space
    from toolchain.sweep.study import show_sweep

    summary = show_sweep(load_space(space), artifacts)
    if json_output:
        emit_json(summary)
    else:
        _show_summary(summary)


app.command("run")(run)
app.command("show")(show)


def register(parent: typer.Typer) -> None:
    """Add `sweep` to the toolchain app."""
    parent.add_typer(app, name="sweep")
