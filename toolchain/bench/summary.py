"""The record of a `toolchain target bench` run over several models: one row per measurement, and where
each model's full result is (artifacts/bench-remote/<target>-<UTC time>.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from toolchain.artifacts import read_manifest
from toolchain.bench.results import BenchRun, result_path
from toolchain.bench.settings import BenchSettings
from toolchain.remote.deploy import DeployReport
from toolchain.remote.target import TargetProfile

SUMMARY_SCHEMA = "toolchain.bench-remote/1"
SUMMARY_DIR = "bench-remote"


@dataclass(frozen=True)
class ModelBench:
    """One model of a `toolchain target bench` run: its artifact (made by this run or not), deploy and bench."""

    model: str
    folder: Path
    exported_now: bool
    deploy: DeployReport
    run: BenchRun


@dataclass(frozen=True)
class ModelFailure:
    """A model of a `toolchain target bench` run that failed, with the error's message and hint."""

    model: str
    error: str
    hint: str


def summary_rows(benches: list[ModelBench]) -> list[dict[str, Any]]:
    """One row per measurement: latency (flagged emulated or not), throughput, top-1 on target and host, agreement."""
    rows = []
    for bench in benches:
        host = read_manifest(bench.folder).accuracy
        agreed = {(item.variant, item.threads, item.batch): item.agreement_pct for item in bench.run.agreements}
        for entry in bench.run.document["results"]:
            latency = entry["latency_ms"]
            rows.append({"model": bench.model, "emulated": bench.run.document["target"]["emulated"],
                         "variant": entry["variant"], "threads": entry["threads"],
                         "batch": entry["batch"], "p50_ms": latency["p50"], "p90_ms": latency["p90"],
                         "p99_ms": latency["p99"], "throughput_ips": entry["throughput_ips"],
                         "top1_target": entry["accuracy"]["top1"],
                         "top1_host": getattr(host.variant(entry["variant"]), "top1", None),
                         "agreement_pct": agreed.get((entry["variant"], entry["threads"], entry["batch"])),
                         "model_bytes": entry["model_bytes"]})
    return rows


def summary_document(profile: TargetProfile, settings: BenchSettings, benches: list[ModelBench],
                     failures: list[ModelFailure], created: datetime) -> dict[str, Any]:
    """The record of a `toolchain target bench` run: one row per measurement, and where each full result is."""
    return {
        "schema": SUMMARY_SCHEMA, "created": created.isoformat(timespec="seconds"),
        "target": {"profile": profile.name, "address": profile.address, "emulated": profile.emulated,
                   "description": profile.description},
        "settings": settings.to_dict(),
        "models": [{"model": bench.model, "artifact_id": bench.deploy.artifact_id, "folder": str(bench.folder),
                    "exported_now": bench.exported_now, "result": str(bench.run.path),
                    "deploy": {"bytes_sent": bench.deploy.bytes_sent, "seconds": round(bench.deploy.seconds, 3),
                               "runtime": bench.deploy.runtime.to_dict() if bench.deploy.runtime else None},
                    "measured_on": bench.run.document["target"]} for bench in benches],
        "failed": [asdict(failure) for failure in failures],
        "rows": summary_rows(benches),
    }


def summary_path(artifacts: Path, profile: TargetProfile, created: datetime) -> Path:
    """Where a `toolchain target bench` summary is stored: artifacts/bench-remote/<target>-<UTC time>.json."""
    return artifacts / SUMMARY_DIR / result_path(artifacts, profile.name, created).name
