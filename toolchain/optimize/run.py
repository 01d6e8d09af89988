"""`toolchain optimize`: make the candidates on the host, measure every one on the target, keep the winner.

1. the artifact is deployed to the target (runtime provisioned, opset checked) as `toolchain deploy` does;
2. the candidates (toolchain.optimize.candidates) are made on the host and uploaded, sha256-checked, to
   ``<workdir>/<artifact id>/optimize/`` there;
3. with mixed precision on, FP32 and every INT8 flavour are profiled per node on the target (the profile
   agent, toolchain.profiling) and each flavour gets a variant that keeps in float the units that pay for it
   (toolchain.optimize.mixed), made on the host and uploaded too;
4. every candidate is measured on the target with the benchmark agent, one candidate per agent run (one that
   the target's onnxruntime cannot load is recorded, not fatal), ``rounds`` times in a rotated order:
   latency p50 and top-1 on the artifact's eval set, on the target;
5. the decision (toolchain.optimize.decide) becomes an artifact of its own (toolchain.optimize.store): the
   FP32 file, the best INT8 candidate that passed, the decision log in the manifest; the store records it
   as this target's artifact, and it is deployed, so `toolchain bench|deploy --model M --host H` use it.

Under emulation everything runs the same, and the log says the latencies are qemu's.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from toolchain.artifacts import EVALSET_NAME, Artifact, ArtifactStore, load_artifact
from toolchain.bench.results import ProgressCallback
from toolchain.bench.settings import BenchSettings
from toolchain.errors import BenchmarkError, UsageError
from toolchain.optimize.candidates import (FLAVOURS, FP32, MIXED, Candidate, QuantizationInputs, build_int8,
                                           flavour_candidates, flavour_settings, quantization_inputs)
from toolchain.optimize.decide import Decision, Measurement, decide
from toolchain.optimize.targets import target_key
from toolchain.profiling.system import ProfileSettings
from toolchain.remote.target import TargetProfile

Messages = Callable[[str], None]
REMOTE_FOLDER = "optimize"
EMULATED_NOTE = ("EMULATED target: the latencies are qemu's, not the Bluebox's; the mechanism ran, but this "
                 "choice says nothing about the real board")


@dataclass(frozen=True)
class OptimizeSettings:
    """How candidates are made and measured (None: the target profile's bench default)."""

    threads: int = 1
    warmup: int | None = None
    runs: int | None = None
    rounds: int = 3
    profile_runs: int | None = None
    flavours: tuple[tuple[str, str], ...] = FLAVOURS
    mixed: bool = True
    max_drop: float | None = None  # None: the artifact's gate
    calibration: str | None = None
    data_dir: Path | None = None

    def validate(self) -> None:
        if self.threads < 1 or self.rounds < 1 or (self.runs is not None and self.runs < 1):
            raise UsageError("--threads, --rounds and --runs must be at least 1", "e.g. --rounds 3")

    def bench(self, profile: TargetProfile) -> BenchSettings:
        return profile.bench.with_overrides(threads=(self.threads,), batch=1, warmup=self.warmup, runs=self.runs)

    def profiling(self, profile: TargetProfile) -> ProfileSettings:
        bench = self.bench(profile)
        return ProfileSettings(threads=self.threads, warmup=bench.warmup, runs=self.profile_runs or bench.runs)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["flavours"] = [list(item) for item in self.flavours]
        data["data_dir"] = str(self.data_dir) if self.data_dir else None
        return data


@dataclass
class OptimizeResult:
    """The artifact chosen for the target, its decision log and where the choice is recorded."""

    folder: Path
    decision: Decision
    log: dict[str, Any]
    choice: Path
    log_path: Path
    candidates: list[Candidate] = field(default_factory=list)


class TargetRuns:
    """Upload candidates next to the deployed artifact and run the agents on them, under the target's lock."""

    def __init__(self, run: Any, profile: TargetProfile, artifact: Artifact, stamp: str) -> None:
        from toolchain.remote.session import TargetSession

        self.run, self.stamp = run, stamp
        self.session = TargetSession(run.transport, profile)
        self.session.read_facts()
        self.folder = f"{run.models}/{REMOTE_FOLDER}"
        self.evalset = f"{run.models}/{EVALSET_NAME}"
        self.paths: dict[str, str] = {FP32: f"{run.models}/model.fp32.onnx"}
        self.artifact = artifact

    def upload(self, candidates: Sequence[Candidate]) -> None:
        from toolchain.remote.session import LocalFile

        files = [LocalFile(c.file_name, c.path, c.sha256, c.path.stat().st_size)
                 for c in candidates if c.path is not None and c.kind != FP32 and not c.failure]
        if files:
            self.session.upload(files, self.folder, what="the optimize candidates")
        for candidate in candidates:
            if candidate.kind != FP32 and candidate.path is not None and not candidate.failure:
                self.paths[candidate.name] = f"{self.folder}/{candidate.file_name}"

    def profile(self, name: str, settings: ProfileSettings, on_progress: ProgressCallback) -> dict[str, Any]:
        from toolchain.profiling.system import run_profile_agent

        output = f"{self.folder}/profile-{self.stamp}-{name}.json"
        document = run_profile_agent(self.run, {name: self.paths[name]}, self.evalset, settings, output, on_progress)
        return document["results"][0]

    def bench(self, name: str, settings: BenchSettings, on_progress: ProgressCallback) -> dict[str, Any]:
        from toolchain.bench.system import run_agent

        run = dataclasses.replace(self.run, models={name: self.paths[name]}, evalset=self.evalset,
                                  output=f"{self.folder}/bench-{self.stamp}-{name}.json")
        return run_agent(run, settings, on_progress)["results"][0]


def optimize(profile: TargetProfile, source: Path | Artifact, store: ArtifactStore,
             settings: OptimizeSettings = OptimizeSettings(), *, extra: Sequence[Candidate] = (),
             accept_new_host_key: bool = False, break_lock: bool = False, on_message: Messages = lambda _: None,
             on_progress: ProgressCallback = lambda _: None) -> OptimizeResult:
    """Measure FP32, the INT8 flavours, the mixed variants (and `extra` candidates) on the target; keep the winner."""
    from toolchain.bench.system import TargetSystem
    from toolchain.optimize.store import write_choice
    from toolchain.remote.deploy import deploy

    settings.validate()
    artifact = load_artifact(source)
    if artifact.manifest.optimize:
        base = artifact.manifest.optimize.get("base_artifact", "?")
        raise UsageError(f"{artifact.directory} is what `toolchain optimize` chose for "
                         f"{artifact.manifest.optimize.get('target', {}).get('address', 'a target')}, not an export",
                         f"optimize the export it came from: --artifact {artifact.directory.parent / base}")
    started = datetime.now(timezone.utc)
    began = time.perf_counter()
    stamp = f"{started:%Y%m%dT%H%M%SZ}"
    inputs = quantization_inputs(artifact, settings.max_drop, settings.calibration, settings.data_dir)
    with tempfile.TemporaryDirectory(prefix="toolchain-optimize-") as scratch_name:
        scratch = Path(scratch_name)
        candidates = [Candidate(FP32, FP32, artifact.directory / "model.fp32.onnx", sha256=_sha(artifact, FP32))]
        candidates += flavour_candidates(artifact, inputs, scratch, settings.flavours, on_message)
        candidates += list(extra)
        if len(candidates) == 1:
            raise UsageError("no INT8 candidate to measure beside FP32", "pass --flavour, e.g. --flavour qdq-u8s8")
        on_message(f"deploying {artifact.model} {artifact.artifact_id} to {profile.address} (runtime, opset check)")
        deploy(profile, artifact, accept_new_host_key=accept_new_host_key, break_lock=break_lock,
               on_message=on_message)
        system = TargetSystem(profile, accept_new_host_key=accept_new_host_key, break_lock=break_lock)
        with system.place(artifact, started) as run:
            target = TargetRuns(run, profile, artifact, stamp)
            target.upload(candidates)
            facts = target.session.require_facts()
            plans: dict[str, Any] = {}
            if settings.mixed:
                mixed, plans = _mixed_candidates(target, artifact, inputs, candidates, settings, profile, scratch,
                                                 on_message, on_progress)
                target.upload(mixed)
                candidates += mixed
            measured = _measure(target, candidates, settings, profile, on_message, on_progress)
            reference = artifact.manifest.accuracy.baseline_top1
            decision = decide(candidates, measured, reference, inputs.max_drop)
            runtime = run.extra.get("remote", {}).get("runtime", {})
        log = {"schema": "toolchain.optimize/1", "created": started.isoformat(timespec="seconds"),
               "base_artifact": artifact.artifact_id, "model": artifact.model,
               "target": {"key": target_key(profile), "profile": profile.name, "address": profile.address,
                          "emulated": profile.emulated, "cpu": facts.cpu_model, "arch": facts.arch,
                          "onnxruntime": runtime.get("onnxruntime")},
               "emulated": profile.emulated, **({"note": EMULATED_NOTE} if profile.emulated else {}),
               "settings": {**settings.to_dict(), "bench": settings.bench(profile).to_dict()},
               "max_drop_pp": inputs.max_drop, "reference_top1": decision.reference_top1,
               "reference": ("the parent checkpoint's FP32 top-1 (a quantization-aware fine-tune)"
                             if artifact.manifest.accuracy.baseline_top1 is not None else "FP32 top-1 on the target"),
               "chosen": decision.winner, "variant": decision.variant,
               "latency_plans": plans, "candidates": decision.entries,
               "seconds": round(time.perf_counter() - began, 1)}
        folder, choice, log_path = write_choice(store, artifact, candidates, decision, log, profile,
                                                on_message=on_message)
    on_message(f"deploying the chosen artifact {folder.name} to {profile.address}")
    deploy(profile, folder, accept_new_host_key=accept_new_host_key, break_lock=break_lock, on_message=on_message)
    return OptimizeResult(folder, decision, log, choice, log_path, candidates)


def _sha(artifact: Artifact, name: str) -> str:
    return next(item.sha256 for item in artifact.files if item.name == f"model.{name}.onnx")


def _measure(target: TargetRuns, candidates: Sequence[Candidate], settings: OptimizeSettings,
             profile: TargetProfile, on_message: Messages, on_progress: ProgressCallback) -> dict[str, Measurement]:
    """Every measurable candidate, `rounds` times in a rotated order: p50 and top-1 on the target."""
    bench = settings.bench(profile)
    ready = [c for c in candidates if c.name in target.paths]
    measured = {c.name: Measurement() for c in ready}
    for round_index in range(settings.rounds):
        order = ready[round_index % len(ready):] + ready[:round_index % len(ready)]
        on_message(f"round {round_index + 1}/{settings.rounds}: measuring {len(order)} candidates on "
                   f"{target.run.transport.target} ({bench.warmup} warm-up + {bench.runs} runs each, "
                   f"{settings.threads} thread(s))" + (" EMULATED" if profile.emulated else ""))
        for candidate in order:
            result = measured[candidate.name]
            if result.error:
                continue
            try:
                entry = target.bench(candidate.name, bench, on_progress)
            except BenchmarkError as error:
                result.error = f"could not run on the target: {error.message}"
                continue
            result.p50_rounds.append(float(entry["latency_ms"]["p50"]))
            result.top1, result.count = float(entry["accuracy"]["top1"]), int(entry["accuracy"]["count"])
    if measured.get(FP32) is None or measured[FP32].error:
        raise BenchmarkError(f"the FP32 model could not be measured on {target.run.transport.target}: "
                             f"{measured[FP32].error if FP32 in measured else 'not deployed'}",
                             "check the target with `toolchain bench --host ...` first")
    return measured


def _mixed_candidates(target: TargetRuns, artifact: Artifact, inputs: QuantizationInputs,
                      candidates: Sequence[Candidate], settings: OptimizeSettings, profile: TargetProfile,
                      scratch: Path, on_message: Messages, on_progress: ProgressCallback
                      ) -> tuple[list[Candidate], dict[str, Any]]:
    """Profile FP32 and each INT8 flavour per node on the target; a mixed variant per flavour where it pays."""
    from toolchain.optimize.mixed import plan_float_units
    from toolchain.profiling.attribution import attribute, units
    from toolchain.profiling.layers import layer_table

    profiling = settings.profiling(profile)
    on_message(f"per-node profiles on {target.run.transport.target}: FP32 and each INT8 flavour "
               f"({profiling.warmup} warm-up + {profiling.runs} runs)" + (" EMULATED" if profile.emulated else ""))
    try:
        fp32_profile = target.profile(FP32, profiling, on_progress)
    except BenchmarkError as error:
        on_message(f"no mixed variants: the FP32 profile failed: {error.message}")
        return [], {"error": error.message}
    made, plans = [], {}
    for candidate in candidates:
        if candidate.kind != "int8" or candidate.name not in target.paths or candidate.settings is None:
            continue
        try:
            int8_profile = target.profile(candidate.name, profiling, on_progress)
        except BenchmarkError as error:
            plans[candidate.name] = {"error": error.message}
            continue
        layers, int8_map, fp32_model, int8_model = layer_table(inputs.fp32, candidate.path)
        fp32_rows = attribute(fp32_profile, layers, fp32_model.graph, None, None)
        int8_rows = attribute(int8_profile, layers, fp32_model.graph, int8_model.graph, int8_map)
        found = units(fp32_rows, int8_rows, layers)
        kept = plan_float_units(found, int8_rows, layers, fp32_model, int8_model)
        slower = [unit["unit"] for unit in found if unit["ratio"] and unit["ratio"] > 1.0]
        plans[candidate.name] = {"slower_in_int8": slower, "kept_for_latency": [unit.to_json() for unit in kept],
                                 "int8_node_ms": int8_rows["node_total_ms"], "fp32_node_ms": fp32_rows["node_total_ms"]}
        quantized = [layer.name for layer in layers if layer.int8_precision == "int8"]
        rows = tuple(row for unit in kept for row in unit.rows)
        if not kept:
            plans[candidate.name]["why_none"] = (f"no unit whose INT8 is slower ({len(slower)} are) gains more than "
                                                 "the conversions keeping it in float adds")
            continue
        if set(quantized) <= set(rows):
            plans[candidate.name]["why_none"] = "every int8 unit would stay float: that is the FP32 candidate"
            continue
        name = f"{MIXED}-{candidate.flavour}"
        on_message(f"making {name}: {len(kept)} unit(s) kept in float where INT8 is slower on the target")
        flavour = flavour_settings(inputs.base, candidate.settings["format"], candidate.settings["activation_type"],
                                   exclude=rows)
        made.append(build_int8(inputs, name, MIXED, flavour, scratch, kept_for_latency=rows, on_message=on_message))
    return made, plans
