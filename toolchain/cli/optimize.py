"""`toolchain optimize`: INT8 flavours and mixed-precision variants measured on the target; the fastest that
passes the accuracy gate (FP32 when it wins) becomes the target's artifact for `bench` and `deploy`
(toolchain.optimize; docs/profile.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from toolchain.cli.common import agent_progress, artifact_folder, title
from toolchain.cli.options import (DEFAULT_ARTIFACTS, ArtifactsOption, Connection, DataDirOption, JsonOption,
                                   OptionalModelOption, connects)
from toolchain.cli.output import emit_json, info, table, warn
from toolchain.errors import UsageError

OPTIMIZE_EXAMPLE = "toolchain optimize --model hps-06-0.5x --host 10.234.224.16"


def _flavours(values: list[str] | None) -> tuple[tuple[str, str], ...] | None:
    from toolchain.optimize.candidates import FLAVOURS, flavour_name

    if not values:
        return None
    known = {flavour_name(*flavour): flavour for flavour in FLAVOURS}
    unknown = [value for value in values if value not in known]
    if unknown:
        raise UsageError(f"unknown --flavour {unknown[0]!r}", f"use one of: {', '.join(known)}")
    return tuple(known[value] for value in dict.fromkeys(values))


def _show(log: dict[str, Any], profile: Any) -> None:
    emulated = " EMULATED" if log["emulated"] else ""
    columns = ["candidate", "kept in float (accuracy/latency)", "host top-1 %", "target top-1 %", "drop pp",
               f"p50 ms{emulated}", "verdict"]
    rows = []
    for entry in log["candidates"]:
        measured = entry.get("target") or {}
        host = entry.get("host") or {}
        rows.append((entry["candidate"], f"{len(entry['kept_float'])}/{len(entry['kept_for_latency'])}",
                     "-" if host.get("int8_top1") is None else f"{host['int8_top1']:.2f}",
                     "-" if measured.get("top1") is None else f"{measured['top1']:.2f}",
                     "-" if measured.get("drop_pp") is None else f"{measured['drop_pp']:+.2f}",
                     "-" if measured.get("p50_ms") is None else f"{measured['p50_ms']:.4f}", entry["verdict"]))
    table(title(profile, f"optimize {log['model']}"), columns, rows, right_align=columns[1:6])
    for entry in log["candidates"]:
        info(f"{entry['candidate']}: {entry['why']}"
             + (f"; {entry['against_its_flavour']['said']}" if entry.get("against_its_flavour") else ""))
    for name, plan in (log.get("latency_plans") or {}).items():
        if isinstance(plan, dict) and plan.get("why_none"):
            info(f"{name}: no mixed variant: {plan['why_none']}")
        elif isinstance(plan, dict) and plan.get("kept_for_latency"):
            kept = plan["kept_for_latency"]
            gain = sum(item["gain_ms"] for item in kept)
            info(f"{name}: {len(kept)} unit(s) whose INT8 is slower on the target pay for staying float "
                 f"(estimated {gain:.4f} ms in all; the manifest lists each)")
    if log.get("note"):
        warn(log["note"])


@connects()
def optimize(
    connection: Connection,
    model: OptionalModelOption = None,
    artifact: Annotated[Optional[Path], typer.Option(
        "--artifact", "-a", help="Artifact folder to optimize (default: the model's newest export).")] = None,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    threads: Annotated[int, typer.Option("--threads", help="Intra-op threads on the target.", min=1)] = 1,
    warmup: Annotated[Optional[int], typer.Option("--warmup", help="Untimed runs per measurement (default: the "
                                                  "profile's).", min=0)] = None,
    runs: Annotated[Optional[int], typer.Option("--runs", help="Timed runs per measurement (default: the "
                                                "profile's).", min=1)] = None,
    rounds: Annotated[Optional[int], typer.Option(
        "--rounds", help="Measurements per candidate, in rotated order; the median p50 decides (default: 3, 1 on an "
        "emulated target, where each takes minutes).", min=1)] = None,
    flavour: Annotated[Optional[list[str]], typer.Option(
        "--flavour", help="INT8 flavours to try (repeat): qoperator-u8s8, qoperator-s8s8, qdq-u8s8, qdq-s8s8 "
        "(default: all four).")] = None,
    mixed: Annotated[bool, typer.Option("--mixed/--no-mixed", help="Also try each flavour with the nodes kept in "
                                        "float whose INT8 is slower on the target (per-node profile).")] = True,
    max_drop: Annotated[Optional[float], typer.Option(
        "--max-drop", help="Accuracy gate on the target, percentage points (default: the artifact's).", min=0)] = None,
    calibration: Annotated[Optional[str], typer.Option(
        "--calibration", help="Calibration set for the new INT8 candidates (default: the artifact's own).")] = None,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Measure FP32, the INT8 flavours and mixed-precision variants on the target; the fastest that passes the
    accuracy gate becomes the target's artifact for `bench` and `deploy` (the decision log is in its manifest)."""
    from toolchain.artifacts import ArtifactStore
    from toolchain.optimize.candidates import FLAVOURS
    from toolchain.optimize.run import OptimizeSettings
    from toolchain.optimize.run import optimize as run_optimize

    if connection.host is None and connection.target is None:
        raise UsageError("optimize measures on a target: pass --host (or --target)", f"e.g. {OPTIMIZE_EXAMPLE}")
    flavours = _flavours(flavour) or FLAVOURS
    profile = connection.profile()
    folder = artifact if artifact is not None else artifact_folder(None, model, artifacts, OPTIMIZE_EXAMPLE)
    settings = OptimizeSettings(threads=threads, warmup=warmup, runs=runs,
                                rounds=rounds or (1 if profile.emulated else 3), flavours=flavours, mixed=mixed,
                                max_drop=max_drop, calibration=calibration, data_dir=data_dir)
    with agent_progress() as on_progress:
        result = run_optimize(profile, folder, ArtifactStore(artifacts), settings,
                              accept_new_host_key=connection.accept_new_host_key, break_lock=connection.break_lock,
                              on_message=info, on_progress=on_progress)
    if json_output:
        emit_json({**result.log, "artifact": str(result.folder), "choice": str(result.choice),
                   "log_file": str(result.log_path)})
        return
    _show(result.log, profile)
    variant = "FP32" if result.decision.variant == "fp32" else "INT8"
    info(f"chosen for {profile.name} ({profile.address}): {result.decision.winner} ({variant} model of "
         f"{result.folder}); `toolchain bench --model {result.log['model']}` and `toolchain deploy` with this "
         f"target now use it (recorded in {result.choice})")


def register(app: typer.Typer) -> None:
    """Add `optimize` to the toolchain app."""
    app.command("optimize")(optimize)
