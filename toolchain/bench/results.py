"""The agent's result (schema "toolchain.bench/1"): its check, agreement with the host, where it is stored,
and the agent's stderr line protocol (PROGRESS / ERROR)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from toolchain.artifacts import BENCH_DIR, EVALSET_NAME, FP32_NAME, INT8_NAME, read_evalset
from toolchain.errors import BenchmarkError, CommandFailedError
from toolchain.transport.base import describe_exit, last_line

RESULT_SCHEMA = "toolchain.bench/1"
VARIANT_FILES = {"fp32": FP32_NAME, "int8": INT8_NAME}
# the target's top-1 answers must match the host's on at least this share of the eval set
AGREEMENT_THRESHOLD_PCT = 99.0
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
class Agreement:
    """How often a measured model's top-1 answers equal the host's for the same eval images."""

    variant: str
    threads: int
    batch: int
    agreement_pct: float
    count: int
    tied: int = 0  # images that agree only because the host's top logits tie exactly there

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchRun:
    """A finished, checked benchmark and where it was stored."""

    path: Path
    document: dict[str, Any]
    agreements: list[Agreement] = field(default_factory=list)


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


def _check_entry(entry: dict[str, Any], where: str, count: Any) -> None:
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


def validate_result(document: Any) -> dict[str, Any]:
    """Check a result document against schema toolchain.bench/1; returns it, or raises BenchmarkError."""
    if not isinstance(document, dict) or document.get("schema") != RESULT_SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise BenchmarkError(f"bench result has schema {found!r}, expected {RESULT_SCHEMA!r}",
                             "the agent that wrote it is another version: redeploy it and rerun")
    _check_fields(document.get("target"), _TARGET_KEYS, "target")
    _check_fields(document.get("settings"), _SETTINGS_KEYS, "settings")
    results = document.get("results")
    if not isinstance(results, list) or not results:
        raise BenchmarkError("bench result holds no measurements", "rerun the benchmark")
    for index, entry in enumerate(results):
        _check_entry(entry, f"results[{index}]", document["settings"]["evalset"].get("count"))
    return document


def check_measured(document: dict[str, Any], model_hashes: Mapping[str, str], emulated: bool) -> None:
    """Refuse a schema-valid result that did not measure these files (by name: sha256) on this kind of target."""
    if document["target"]["emulated"] != emulated:
        raise BenchmarkError("the result's emulated flag does not match the target profile",
                             "redeploy the agent and rerun")
    for entry in document["results"]:
        if model_hashes.get(VARIANT_FILES.get(entry["variant"], "")) != entry["model_sha256"]:
            raise BenchmarkError(f"the target measured a {entry['variant']} model whose sha256 is not the "
                                 "artifact's", "redeploy the artifact and rerun")


def agreement(document: dict[str, Any], evalset_preds: Mapping[str, np.ndarray],
              ties: Mapping[str, Mapping[str, list[int]]] | None = None) -> list[Agreement]:
    """Per measurement: % of eval images where the measured model's top-1 equals the host's (pred_<variant>).

    ``ties``: per variant, images whose host logits tie exactly (image index as text -> the tied classes):
    there any of the tied classes is the host's answer.
    """
    found = []
    for entry in document["results"]:
        reference = evalset_preds.get(entry["variant"])
        if reference is None:
            continue
        predictions = np.asarray(entry["predictions"], dtype=np.int64)
        if predictions.shape != reference.shape:
            raise BenchmarkError(f"{entry['variant']}: {predictions.size} predictions for {reference.size} host answers",
                                 "the eval set differs from the one measured: redeploy and rerun")
        agrees = predictions == reference
        tied = 0
        for image, classes in (ties or {}).get(entry["variant"], {}).items():
            index = int(image)
            if 0 <= index < agrees.size and not agrees[index] and int(predictions[index]) in classes:
                agrees[index], tied = True, tied + 1
        found.append(Agreement(entry["variant"], int(entry["threads"]), int(entry["batch"]),
                               float(agrees.mean() * 100.0), int(reference.size), tied))
    return found


def host_predictions(artifact_dir: Path) -> dict[str, np.ndarray]:
    """The host's top-1 answers stored in an artifact's eval set, per variant."""
    arrays = read_evalset(artifact_dir / EVALSET_NAME)
    return {variant: arrays[f"pred_{variant}"] for variant in VARIANT_FILES if f"pred_{variant}" in arrays}


def result_path(artifact_dir: Path, target: str, when: datetime, host: str | None = None) -> Path:
    """Where a result is stored: bench/<target>[@<fleet host>]-<UTC time>.json beside the manifest."""
    name = f"{target}@{re.sub(r'[^A-Za-z0-9._-]', '_', host)}" if host else target
    return artifact_dir / BENCH_DIR / f"{name}-{when.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}.json"


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

    def failure(self, where: str, failed: CommandFailedError) -> BenchmarkError:
        """The agent's own ERROR message, else how it ended and its last line of other output.

        `where` completes "the benchmark agent": "" on this machine, " on <target>" elsewhere.
        """
        if self.error_message is not None:
            reason = f"failed: {self.error_message}"
        else:
            # the lines streamed through this object, less the PROGRESS events
            detail = last_line("\n".join(self.other)) if self.other else last_line(failed.stderr)
            reason = describe_exit(failed.exit_status) + (f": {detail}" if detail else "")
        return BenchmarkError(f"the benchmark agent{where} {reason}",
                              "nothing was stored; fix the cause and rerun the bench")
