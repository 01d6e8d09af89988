"""Run the profile agent where a bench system runs the benchmark agent, and assemble `toolchain profile`'s record.

The same places as `toolchain bench` (toolchain.bench.system): this machine (the agent from the package
folder, on the artifact folder) and a target (the installed agent folder, on the deployed artifact, under the
target's lock). Per place: both models' per-node profiles, joined to the FP32 file's rows
(toolchain.profiling.attribution), the INT8/FP32 ratio per unit, and the roofline's data: each unit's
arithmetic intensity and achieved GFLOP/s under the machine's ceilings (float32 GEMM peak and copy bandwidth,
measured there over the same transport, else the target profile's spec; none under emulation).

The record (schema ``toolchain.profile/1``) is stored beside the manifest as profile/<UTC time>.json, with one
roofline SVG per place (profile/<UTC time>-<place>-roofline.svg).
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from toolchain.artifacts import EVALSET_NAME, Artifact
from toolchain.bench.results import VARIANT_FILES, AgentStderr, ProgressCallback
from toolchain.errors import BenchmarkError, CommandFailedError, UsageError
from toolchain.fsutil import atomic_write_bytes, atomic_write_json
from toolchain.remote.agent_package import PROFILE_AGENT

AGENT_SCHEMA = "toolchain.profile-agent/1"
PROFILE_SCHEMA = "toolchain.profile/1"
PROFILE_DIR = "profile"
TOP_UNITS = 10

Messages = Callable[[str], None]


@dataclass(frozen=True)
class ProfileSettings:
    """How the profile agent measures: one thread by default (per-node times of a single core)."""

    threads: int = 1
    batch: int = 1
    warmup: int = 10
    runs: int = 100

    def validate(self) -> None:
        if min(self.threads, self.batch, self.runs) < 1 or self.warmup < 0:
            raise UsageError("--threads, --batch and --runs must be at least 1, --warmup at least 0",
                             "e.g. --threads 1 --runs 100")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def agent_command(python: str, agent: str, models: Mapping[str, str], evalset: str, settings: ProfileSettings,
                  output: str, emulated: bool) -> list[str]:
    command = [python, agent]
    for variant, path in models.items():
        command += ["--model", f"{variant}={path}"]
    command += ["--evalset", evalset, "--threads", str(settings.threads), "--batch", str(settings.batch),
                "--warmup", str(settings.warmup), "--runs", str(settings.runs), "--output", output, "--progress"]
    return command + (["--emulated"] if emulated else [])


def validate_agent_result(document: Any, variants: Sequence[str]) -> dict[str, Any]:
    """Check the profile agent's result: its schema, one profile per variant asked for, nodes with times."""
    if not isinstance(document, dict) or document.get("schema") != AGENT_SCHEMA:
        raise BenchmarkError("the profile agent's result has another schema", "redeploy the agent and rerun")
    results = document.get("results")
    if not isinstance(results, list) or sorted(item.get("variant") for item in results) != sorted(variants):
        raise BenchmarkError("the profile agent's result lacks a variant", "rerun the profile")
    for item in results:
        nodes = item.get("nodes")
        if not isinstance(nodes, list) or not nodes or not all(
                isinstance(node, dict) and isinstance(node.get("time_us"), (int, float)) for node in nodes):
            raise BenchmarkError(f"the profile of {item.get('variant')} has no node times",
                                 "rerun the profile; onnxruntime wrote no per-node events")
    return document


def run_profile_agent(run: Any, models: Mapping[str, str], evalset: str, settings: ProfileSettings,
                      output: str, on_progress: ProgressCallback) -> dict[str, Any]:
    """Run the profile agent as `run` (a bench system's AgentRun) places it; fetch and check its result."""
    stderr = AgentStderr(on_progress)
    agent = posixpath.join(posixpath.dirname(run.agent), PROFILE_AGENT)
    command = agent_command(run.python, agent, models, evalset, settings, output, run.emulated)
    try:
        run.transport.run(command, env=run.env, timeout=run.timeout, label="the profile agent",
                          on_stderr_line=stderr)
    except CommandFailedError as failed:
        error = stderr.failure(run.where, failed)
        raise BenchmarkError(error.message.replace("benchmark agent", "profile agent"),
                             "nothing was stored; fix the cause and rerun the profile") from None
    with tempfile.TemporaryDirectory(prefix="toolchain-profile-") as scratch:
        fetched = Path(scratch) / "profile.json"
        run.transport.get(output, fetched)
        try:
            document = json.loads(fetched.read_text())
        except ValueError as exc:
            raise BenchmarkError(f"the profile agent's result is not valid JSON: {exc}", "rerun the profile") from None
    return validate_agent_result(document, list(models))


def profile_on(system: Any, artifact: Artifact, settings: ProfileSettings, started: datetime, *,
               on_message: Messages, on_progress: ProgressCallback) -> dict[str, Any]:
    """Both models' raw per-node profiles on one bench system, with that machine's ceilings."""
    with system.place(artifact, started) as run:
        base = str(run.models)
        models = {variant: f"{base}/{name}" for variant, name in VARIANT_FILES.items()}
        output = posixpath.join(posixpath.dirname(run.output), f"profile-{started:%Y%m%dT%H%M%SZ}.json")
        on_message(f"profiling FP32 and INT8 on {run.transport.target}: {settings.threads} thread(s), "
                   f"{settings.warmup} warm-up + {settings.runs} profiled runs each"
                   + (" (EMULATED: times are qemu's, not the Bluebox's)" if system.emulated else ""))
        document = run_profile_agent(run, models, f"{base}/{EVALSET_NAME}", settings, output, on_progress)
        hashes = {item.name: item.sha256 for item in artifact.files}
        for item in document["results"]:
            if hashes.get(VARIANT_FILES[item["variant"]]) != item["model_sha256"]:
                raise BenchmarkError(f"the profile agent measured a {item['variant']} model that is not the "
                                     "artifact's", "redeploy the artifact and rerun")
        document["ceilings"] = ceilings(system, run, document["target"], settings.threads, on_message)
        document["place"] = {"name": system.name, "emulated": system.emulated, **run.extra.get("remote", {})}
    return document


def ceilings(system: Any, run: Any, facts: Mapping[str, Any], threads: int, on_message: Messages) -> dict[str, Any]:
    """The roofline's peak GFLOP/s (at `threads`) and bandwidth: measured on that machine, else its profile's
    spec; none under emulation."""
    from toolchain.bench.peak import measured_bandwidth, measured_peak, spec_bandwidth

    if system.emulated:
        return {"peak": None, "bandwidth": None, "note": "emulated target: no ceilings (qemu's speed is not the core's)"}
    found: dict[str, Any] = {}
    try:
        found["peak"] = measured_peak(run.transport, run.python, facts, (threads,), env=run.env).to_json()
    except BenchmarkError as error:
        on_message(f"{error.message}; using the profile's CPU spec where it has one")
        spec = system.spec_peak((threads,))
        found["peak"] = spec.to_json() if spec else None
    try:
        found["bandwidth"] = measured_bandwidth(run.transport, run.python, facts, env=run.env).to_json()
    except BenchmarkError as error:
        on_message(f"{error.message}; using the profile's memory spec where it has one")
        profile = getattr(system, "profile", None)
        spec = spec_bandwidth(getattr(profile, "memory_gbps", None), getattr(profile, "name", system.name))
        found["bandwidth"] = spec.to_json() if spec else None
    return found


def place_record(raw: Mapping[str, Any], layers: Sequence[Any], int8_map: Any, fp32: Any, int8: Any,
                 top: int = TOP_UNITS) -> dict[str, Any]:
    """One machine's part of the record: both variants attributed to the rows, units, top units, roofline."""
    from toolchain.profiling.attribution import attribute, units

    results = {item["variant"]: item for item in raw["results"]}
    variants = {"fp32": attribute(results["fp32"], layers, fp32.graph, None, None),
                "int8": attribute(results["int8"], layers, fp32.graph, int8.graph, int8_map)}
    found = units(variants["fp32"], variants["int8"], layers)
    for unit in found:
        unit.update(_unit_traffic(unit, layers, fp32))
    return {"place": raw["place"], "target": raw["target"], "settings": raw["settings"],
            "ceilings": raw["ceilings"], "variants": variants, "units": found, "top": found[:top]}


def _unit_traffic(unit: Mapping[str, Any], layers: Sequence[Any], fp32: Any) -> dict[str, Any]:
    """A unit's bytes (weights + the activations crossing its boundary) and roofline coordinates per variant."""
    by_name = {layer.name: layer for layer in layers}
    names = set(unit["rows"])
    graph = fp32.graph
    constants = graph.constants()
    made = {output for name in names for output in graph.by_name[name].outputs}
    boundary_in = {t for name in names for t in graph.by_name[name].inputs if t and t not in constants and t not in made}
    boundary_out = {t for t in made if t in graph.outputs or any(c not in names for c in graph.consumers.get(t, ()))}
    elements = sum(fp32.bytes_of(t) // 4 for t in boundary_in | boundary_out)
    flops = 2 * unit["macs"]
    primary = by_name[unit["unit"]]
    fp32_bytes = sum(by_name[name].weight_bytes for name in names) + 4 * elements
    int8_bytes = (sum(by_name[name].int8_weight_bytes or by_name[name].weight_bytes for name in names)
                  + (1 if primary.int8_precision == "int8" else 4) * elements)

    def point(ms: float, moved: int) -> dict[str, Any] | None:
        if not flops or not ms or not moved:
            return None
        return {"intensity": flops / moved, "gflops": flops / (ms / 1e3) / 1e9}

    return {"flops": flops, "fp32_bytes": fp32_bytes, "int8_bytes": int8_bytes,
            "roofline": {"fp32": point(unit["fp32_ms"], fp32_bytes), "int8": point(unit["int8_ms"], int8_bytes)}}


@dataclass
class ProfileRun:
    """A finished `toolchain profile`: the record, where it is stored, the roofline plots."""

    document: dict[str, Any]
    path: Path
    plots: list[Path]


def profile_artifact(artifact: Artifact, places: Sequence[tuple[Any, ProfileSettings]], *,
                     on_message: Messages = lambda _: None,
                     on_progress: ProgressCallback = lambda _: None, top: int = TOP_UNITS) -> ProfileRun:
    """Profile an artifact's FP32 and INT8 models on each (bench system, settings); store the record and a
    roofline per place."""
    from toolchain.artifacts import FP32_NAME, INT8_NAME
    from toolchain.bench.system import LocalSystem
    from toolchain.profiling.layers import layer_table
    from toolchain.report.svg import roofline_plot

    for _, settings in places:
        settings.validate()
    started = datetime.now(timezone.utc)
    layers, int8_map, fp32, int8 = layer_table(artifact.directory / FP32_NAME, artifact.directory / INT8_NAME)
    records: list[dict[str, Any] | None] = [None] * len(places)
    # targets first: a target that refuses (not deployed, unreachable) costs no profile of this machine
    for index in sorted(range(len(places)), key=lambda index: isinstance(places[index][0], LocalSystem)):
        system, settings = places[index]
        raw = profile_on(system, artifact, settings, started, on_message=on_message, on_progress=on_progress)
        records[index] = place_record(raw, layers, int8_map, fp32, int8, top)
    document = {
        "schema": PROFILE_SCHEMA, "created": started.isoformat(timespec="seconds"),
        "artifact": {"artifact_id": artifact.artifact_id, "model": artifact.model, "folder": str(artifact.directory)},
        "graph_optimization": ("onnxruntime's default, ORT_ENABLE_ALL, as the bench runs: node names are those of "
                               "the optimised graph, mapped back to the file's nodes"),
        "layers": [layer.to_json() for layer in layers],
        "int8_map": {"int8_only": int8_map.int8_only, "folded": {k: {"into": v[0], "why": v[1]}
                                                                 for k, v in int8_map.folded.items()},
                     "unmatched": int8_map.unmatched},
        "places": records,
    }
    folder = artifact.directory / PROFILE_DIR
    stamp = f"{started:%Y%m%dT%H%M%SZ}"
    plots = []
    for place in records:
        path = folder / f"{stamp}-{place['place']['name']}-roofline.svg"
        atomic_write_bytes(path, roofline_plot(roofline_title(artifact.model, place), roofline_series(place),
                                               place["ceilings"]).encode())
        place["roofline_svg"] = str(path)
        plots.append(path)
    path = folder / f"{stamp}.json"
    atomic_write_json(path, document)
    return ProfileRun(document, path, plots)


def roofline_title(model: str, place: Mapping[str, Any]) -> str:
    where = place["place"]
    address = where.get("address")
    return (f"{model} on {where['name']}" + (f" ({address})" if address and address != where["name"] else "")
            + f", {place['settings']['threads']} thread(s)" + (" -- EMULATED: no ceilings" if where["emulated"] else ""))


def roofline_series(place: Mapping[str, Any]) -> list[tuple[str, list[tuple[float, float, str]]]]:
    """(variant, [(intensity, GFLOP/s, unit name)]) for the plot."""
    series = []
    for variant in ("fp32", "int8"):
        points = [(unit["roofline"][variant]["intensity"], unit["roofline"][variant]["gflops"], unit["unit"])
                  for unit in place["units"] if unit["roofline"][variant]]
        series.append((variant.upper(), points))
    return series
