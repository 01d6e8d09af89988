"""Host side of benchmarking: settings, the agent's command line, running it locally, checking results.

The timed loop itself is toolchain/remote/agent/bench_agent.py, the same file that runs on the
target; its JSON result (schema "toolchain.bench/1") is checked here (`validate_result`), compared
with the host's answers stored in the eval set (`agreement`) and stored beside the manifest as
``bench/<target>-<UTC time>.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from toolchain.artifacts import BENCH_DIR, EVALSET_NAME, FP32_NAME, INT8_NAME, read_evalset, read_manifest
from toolchain.errors import BenchmarkError, UsageError
from toolchain.fsutil import atomic_write_json

RESULT_SCHEMA = "toolchain.bench/1"
AGENT_PATH = Path(__file__).resolve().parent / "remote" / "agent" / "bench_agent.py"
VARIANT_FILES = {"fp32": FP32_NAME, "int8": INT8_NAME}
LOCAL_TARGET = "local"
_PROGRESS, _ERROR = "PROGRESS ", "ERROR "
_TARGET_KEYS = {"hostname": str, "arch": str, "cpu_model": str, "cores": int, "python": str, "numpy": str,
                "onnxruntime": str, "os": str, "glibc": str, "emulated": bool}
_SETTINGS_KEYS = {"batch": int, "warmup": int, "runs": int, "min_time_s": (int, float), "threads": list,
                  "evalset": dict}
_RESULT_KEYS = {"variant": str, "model_file": str, "model_sha256": str, "model_bytes": int, "threads": int,
                "batch": int, "providers": list, "latency_ms": dict, "runs": int, "throughput_ips": (int, float),
                "peak_rss_mb": (int, float), "accuracy": dict, "predictions": list}
_LATENCY_KEYS = ("p50", "p90", "p99", "mean", "std", "min", "max")

ProgressCallback = Callable[[dict], None]


@dataclass(frozen=True)
class BenchSettings:
    """How the agent measures (DESIGN.md's protocol)."""

    threads: tuple[int, ...] = (1, 2)
    batch: int = 1
    warmup: int = 20
    runs: int = 200
    min_time_s: float = 0.0

    def validate(self) -> None:
        """Fail with a usage error naming the option if a setting cannot work."""
        if not self.threads or min(self.threads) < 1:
            raise UsageError(f"--threads must be positive integers, got {list(self.threads)}", "e.g. --threads 1,2")
        for option, value in (("--batch", self.batch), ("--runs", self.runs)):
            if value < 1:
                raise UsageError(f"{option} must be at least 1, got {value}", f"pass a positive {option}")
        if self.warmup < 0 or self.min_time_s < 0:
            raise UsageError("--warmup and --min-time must not be negative", "pass 0 or more")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["threads"] = list(self.threads)
        return data


@dataclass(frozen=True)
class Agreement:
    """How often a measured model's top-1 answers equal the host's for the same eval images."""

    variant: str
    threads: int
    batch: int
    agreement_pct: float
    count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchRun:
    """A finished, checked benchmark and where it was stored."""

    path: Path
    document: dict[str, Any]
    agreements: list[Agreement] = field(default_factory=list)


def parse_threads(text: str) -> tuple[int, ...]:
    """--threads "1,2" as a tuple of positive integers."""
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise UsageError(f"--threads must be comma-separated positive integers, got {text!r}", "e.g. --threads 1,2")
    return counts


def agent_command(python: str, agent_path: str | Path, models: str | Path | Mapping[str, str | Path],
                  settings: BenchSettings, output: str | Path, emulated: bool = False,
                  evalset: str | Path | None = None, progress: bool = True) -> list[str]:
    """The agent's command line: for an artifact folder (both models and its eval set) or explicit files.

    Paths are used as given (they may be paths on the target: nothing here touches them).
    """
    if isinstance(models, Mapping):
        files = dict(models)
        if evalset is None:
            raise UsageError("explicit model files need an eval set", "pass evalset=PATH (an evalset.npz)")
    else:
        files = {variant: f"{models}/{name}" for variant, name in VARIANT_FILES.items()}
        evalset = evalset or f"{models}/{EVALSET_NAME}"
    command = [python, str(agent_path)]
    for variant, path in files.items():
        command += ["--model", f"{variant}={path}"]
    command += ["--evalset", str(evalset), "--threads", ",".join(map(str, settings.threads)),
                "--batch", str(settings.batch), "--warmup", str(settings.warmup), "--runs", str(settings.runs),
                "--min-time", f"{settings.min_time_s:g}", "--output", str(output)]
    return command + (["--progress"] if progress else []) + (["--emulated"] if emulated else [])


def _check_fields(record: Any, expected: Mapping[str, Any], where: str) -> None:
    if not isinstance(record, dict):
        raise BenchmarkError(f"bench result: {where} is not an object", "rerun the benchmark with this toolchain")
    for key, kind in expected.items():
        value = record.get(key)
        # bool is an int in Python; a count must not be a bool, a flag must be one
        wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if wrong:
            raise BenchmarkError(f"bench result: {where}.{key} is missing or not {getattr(kind, '__name__', kind)}",
                                 "rerun the benchmark with this toolchain's agent")


def validate_result(document: Any) -> dict[str, Any]:
    """Check a result document against schema toolchain.bench/1; returns it, or raises BenchmarkError."""
    if not isinstance(document, dict) or document.get("schema") != RESULT_SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise BenchmarkError(f"bench result has schema {found!r}, expected {RESULT_SCHEMA!r}",
                             "the agent that wrote it is another version: redeploy it and rerun")
    _check_fields(document.get("target"), _TARGET_KEYS, "target")
    _check_fields(document.get("settings"), _SETTINGS_KEYS, "settings")
    count = document["settings"]["evalset"].get("count")
    results = document.get("results")
    if not isinstance(results, list) or not results:
        raise BenchmarkError("bench result holds no measurements", "rerun the benchmark")
    for index, entry in enumerate(results):
        where = f"results[{index}]"
        _check_fields(entry, _RESULT_KEYS, where)
        latency = entry["latency_ms"]
        if not all(isinstance(latency.get(key), (int, float)) and latency[key] >= 0 for key in _LATENCY_KEYS):
            raise BenchmarkError(f"bench result: {where}.latency_ms lacks one of {', '.join(_LATENCY_KEYS)}",
                                 "rerun the benchmark with this toolchain's agent")
        if not latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]:
            raise BenchmarkError(f"bench result: {where}.latency_ms percentiles are out of order",
                                 "the result was edited or the agent is broken: rerun")
        if len(entry["predictions"]) != count or not all(isinstance(p, int) for p in entry["predictions"]):
            raise BenchmarkError(f"bench result: {where} has {len(entry['predictions'])} predictions for "
                                 f"{count} eval images", "rerun the benchmark")
    return document


def agreement(document: dict[str, Any], evalset_preds: Mapping[str, np.ndarray]) -> list[Agreement]:
    """Per measurement: % of eval images where the measured model's top-1 equals the host's (pred_<variant>)."""
    found = []
    for entry in document["results"]:
        reference = evalset_preds.get(entry["variant"])
        if reference is None:
            continue
        predictions = np.asarray(entry["predictions"], dtype=np.int64)
        if predictions.shape != reference.shape:
            raise BenchmarkError(f"{entry['variant']}: {predictions.size} predictions for {reference.size} host answers",
                                 "the eval set differs from the one measured: redeploy and rerun")
        found.append(Agreement(entry["variant"], int(entry["threads"]), int(entry["batch"]),
                               float((predictions == reference).mean() * 100.0), int(reference.size)))
    return found


def host_predictions(artifact_dir: Path) -> dict[str, np.ndarray]:
    """The host's top-1 answers stored in an artifact's eval set, per variant."""
    arrays = read_evalset(artifact_dir / EVALSET_NAME)
    return {variant: arrays[f"pred_{variant}"] for variant in VARIANT_FILES if f"pred_{variant}" in arrays}


def result_path(artifact_dir: Path, target: str, when: datetime) -> Path:
    """Where a result is stored: bench/<target>-<UTC time>.json beside the manifest."""
    return artifact_dir / BENCH_DIR / f"{target}-{when.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}.json"


class AgentStderr:
    """The agent's stderr, line by line as it arrives (locally or over SSH): PROGRESS events go to the
    callback, ERROR lines are kept for the failure message, anything else is kept as other output."""

    def __init__(self, on_progress: ProgressCallback) -> None:
        self.on_progress = on_progress
        self.errors: list[dict] = []
        self.other: list[str] = []

    def __call__(self, line: str) -> None:
        line = line.rstrip("\n")
        if line.startswith(_PROGRESS):
            try:
                self.on_progress(json.loads(line[len(_PROGRESS):]))
            except ValueError:
                self.other.append(line)
        elif line.startswith(_ERROR):
            try:
                self.errors.append(json.loads(line[len(_ERROR):]))
            except ValueError:
                self.errors.append({"message": line[len(_ERROR):]})
        elif line.strip():
            self.other.append(line)

    @property
    def error_message(self) -> str | None:
        """The agent's own last ERROR message, if it reported one."""
        return self.errors[-1].get("message", "") if self.errors else None


def run_agent(command: list[str], on_progress: ProgressCallback, timeout: float | None = None) -> None:
    """Run the agent in a local subprocess, streaming its PROGRESS lines; ERROR lines become BenchmarkError."""
    lines = AgentStderr(on_progress)
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as process:
        assert process.stderr is not None
        for line in process.stderr:
            lines(line)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise BenchmarkError(f"the benchmark agent ran past {timeout:g} s", "lower --runs or --min-time") from None
    if code != 0:
        detail = lines.error_message
        if detail is None:
            detail = lines.other[-1] if lines.other else f"exit status {code}"
        raise BenchmarkError(f"the benchmark agent failed: {detail}", "nothing was stored; fix the cause and rerun")


def bench_local(artifact_dir: Path, settings: BenchSettings,
                on_progress: ProgressCallback = lambda _: None) -> BenchRun:
    """Run the agent on this machine against an artifact; store and return the checked result."""
    settings.validate()
    manifest = read_manifest(artifact_dir)
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="toolchain-bench-") as scratch:
        output = Path(scratch) / "result.json"
        run_agent(agent_command(sys.executable, AGENT_PATH, artifact_dir, settings, output), on_progress)
        try:
            document = json.loads(output.read_text())
        except (OSError, ValueError) as exc:
            raise BenchmarkError(f"the agent's result is unreadable: {exc}", "rerun the benchmark") from None
    validate_result(document)
    found = agreement(document, host_predictions(artifact_dir))
    document["artifact"] = {"artifact_id": manifest.get("artifact_id"), "model": manifest.get("model"),
                            "folder": str(artifact_dir), "target": LOCAL_TARGET}
    document["agreement"] = [item.to_dict() for item in found]
    path = result_path(artifact_dir, LOCAL_TARGET, started)
    atomic_write_json(path, document)
    return BenchRun(path, document, found)
