"""`toolchain profile`: per-layer figures of an artifact, joined with onnxruntime's per-node profile of FP32 and
INT8 on this machine and, with --host/--target, on a target; the top layers by time with their INT8/FP32 ratio,
and a roofline per machine (toolchain.profiling; docs/profile.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from toolchain.cli.common import agent_progress, artifact_folder
from toolchain.cli.options import (DEFAULT_ARTIFACTS, ArtifactsOption, Connection, JsonOption, OptionalModelOption,
                                   connects)
from toolchain.cli.output import emit_json, info, table, warn

if TYPE_CHECKING:
    from toolchain.profiling.system import ProfileSettings

PROFILE_EXAMPLE = "toolchain profile --model hps-06-0.5x"
LOCAL_RUNS, LOCAL_WARMUP = 100, 10


def _ms(value: float | None) -> str:
    return "-" if not value else f"{value:.4f}"


def _show_place(place: dict[str, Any], layers: dict[str, dict[str, Any]]) -> None:
    where = place["place"]
    emulated = where["emulated"]
    label = " EMULATED" if emulated else ""
    columns = ["layer", "op", "rows", "params", "MACs", "FLOP/B fp32", f"FP32 ms{label}", f"INT8 ms{label}",
               "INT8/FP32", "INT8 computes in"]
    rows = []
    for unit in place["top"]:
        layer = layers[unit["unit"]]
        intensity = unit["roofline"]["fp32"]["intensity"] if unit["roofline"]["fp32"] else layer["intensity"]
        rows.append((unit["unit"], unit["op_type"], len(unit["rows"]), sum(layers[n]["params"] for n in unit["rows"]),
                     f"{unit['macs']:,}", "-" if not intensity else f"{intensity:.1f}", _ms(unit["fp32_ms"]),
                     _ms(unit["int8_ms"]), "-" if unit["ratio"] is None else f"{unit['ratio']:.2f}",
                     unit["int8_precision"] or "-"))
    address = where.get("address") or where["name"]
    table(f"top layers by time on {where['name']} ({address}), {place['settings']['threads']} thread(s)"
          + (" -- EMULATED (qemu-user): times are not the Bluebox's" if emulated else ""),
          columns, rows, right_align=columns[2:9])
    for variant in ("fp32", "int8"):
        record = place["variants"][variant]
        coverage = record["coverage"]
        extras = {}
        for extra in record["extras"]:
            extras[extra["op_type"]] = extras.get(extra["op_type"], 0.0) + extra["ms"]
        info(f"{variant.upper()}: {coverage['rows']} file rows: {coverage['own']} timed, {coverage['fused']} fused, "
             f"{coverage['folded']} folded, {coverage['removed']} removed, {coverage['none']} without a node; "
             f"{record['profiled_nodes']} profiled nodes, sum {record['node_total_ms']:.3f} ms"
             + (f" (of which not a file node: {', '.join(f'{op} {ms:.3f}' for op, ms in sorted(extras.items()))})"
                if extras else "")
             + f"; profiled run p50 {record['latency_ms']['p50']:.3f} ms{label}")
        if coverage["unattributed"]:
            warn(f"{variant}: {coverage['unattributed']} row(s) could not be mapped to a profiled node")
    ceilings = place["ceilings"]
    if ceilings.get("note"):
        info(f"roofline: {ceilings['note']}")
    else:
        peak, bandwidth = ceilings.get("peak"), ceilings.get("bandwidth")
        info("roofline ceilings: "
             + (f"peak {list(peak['fp32_gflops'].values())[0]:.1f} GFLOP/s ({peak['source']})" if peak else "no peak")
             + ", " + (f"bandwidth {bandwidth['gbps']:.1f} GB/s ({bandwidth['source']})" if bandwidth else
                       "no bandwidth"))
    info(f"roofline: {place['roofline_svg']}")


@connects()
def profile(
    connection: Connection,
    model: OptionalModelOption = None,
    artifact: Annotated[Optional[Path], typer.Option(
        "--artifact", "-a", help="Artifact folder (artifacts/<model>/<id>/); default: the model's newest.")] = None,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    threads: Annotated[int, typer.Option("--threads", help="Intra-op threads of the profiled sessions.", min=1)] = 1,
    warmup: Annotated[Optional[int], typer.Option(
        "--warmup", help=f"Untimed runs first (default: {LOCAL_WARMUP} here, the target profile's bench warm-up "
        "there).", min=0)] = None,
    runs: Annotated[Optional[int], typer.Option(
        "--runs", help=f"Profiled runs (default: {LOCAL_RUNS} here, the target profile's bench runs there).",
        min=1)] = None,
    top: Annotated[int, typer.Option("--top", help="Layers to show, slowest first (0: all).", min=0)] = 10,
    json_output: JsonOption = False,
) -> None:
    """Per layer: params, MACs, bytes, FLOP/byte, and onnxruntime's per-node time of FP32 and INT8 (here, and on
    the target with --host/--target); the slowest layers with their INT8/FP32 ratio; a roofline per machine."""
    from toolchain.bench.system import LocalSystem, TargetSystem
    from toolchain.profiling.system import ProfileSettings, profile_artifact
    from toolchain.artifacts import load_artifact

    remote = connection.host is not None or connection.target is not None
    target_profile = connection.profile() if remote else None
    folder = artifact_folder(artifact, model, artifacts, PROFILE_EXAMPLE, target=target_profile)
    places: list[tuple[Any, "ProfileSettings"]] = [
        (LocalSystem(), ProfileSettings(threads=threads, warmup=LOCAL_WARMUP if warmup is None else warmup,
                                        runs=runs or LOCAL_RUNS))]
    if target_profile is not None:
        bench = target_profile.bench
        places.append((TargetSystem(target_profile, accept_new_host_key=connection.accept_new_host_key,
                                    break_lock=connection.break_lock),
                       ProfileSettings(threads=threads, warmup=bench.warmup if warmup is None else warmup,
                                       runs=runs or bench.runs)))
    with agent_progress() as on_progress:
        run = profile_artifact(load_artifact(folder), places, on_message=info, on_progress=on_progress,
                               top=top or 10 ** 9)
    if json_output:
        emit_json({**run.document, "stored": str(run.path)})
        return
    layers = {layer["name"]: layer for layer in run.document["layers"]}
    for place in run.document["places"]:
        _show_place(place, layers)
    info(f"stored {run.path}")


def register(app: typer.Typer) -> None:
    """Add `profile` to the toolchain app."""
    app.command("profile")(profile)
