"""Remote bench: run the benchmark agent on the target, stream its progress, fetch and check its result.

What the local bench has is toolchain.benchmark's and used as it is: the agent (uploaded by `deploy`
beside the models), its command line, the result schema and its check, the agreement with the host's
answers stored in the eval set, and where a result is stored (bench/<target>-<UTC time>.json beside
the manifest). A remote result has the keys a `toolchain bench --target local` result has, plus
``remote``: profile, address, the runtime the deploy recorded. This module adds what is remote only:
checking the deployed files, running over the transport, fetching, and the summary of a
`toolchain target bench` run over several models (artifacts/bench-remote/<target>-<UTC time>.json).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from toolchain.artifacts import read_manifest
from toolchain.benchmark import (VARIANT_FILES, AgentStderr, BenchRun, BenchSettings, ProgressCallback,
                                 agent_command, agreement, host_predictions, result_path, validate_result)
from toolchain.errors import BenchmarkError, CommandFailedError, DeployError
from toolchain.fsutil import atomic_write_json
from toolchain.remote.deploy import AGENT_NAME, RECEIPT, Artifact, DeployReport, load_artifact
from toolchain.remote.session import TargetSession
from toolchain.remote.target import TargetProfile, open_transport
from toolchain.transport.base import describe_exit, last_line

# the target's top-1 answers must match the host's on at least this share of the eval set
AGREEMENT_THRESHOLD_PCT = 99.0
SUMMARY_SCHEMA = "toolchain.bench-remote/1"
SUMMARY_DIR = "bench-remote"

Messages = Callable[[str], None]


def bench_settings(profile: TargetProfile, threads: tuple[int, ...] | None = None, batch: int | None = None,
                   warmup: int | None = None, runs: int | None = None,
                   min_time: float | None = None) -> BenchSettings:
    """The profile's [bench] defaults, each replaced by the command line's value where one was given."""
    defaults = profile.bench
    settings = BenchSettings(threads=tuple(threads or defaults.threads),
                             batch=defaults.batch if batch is None else batch,
                             warmup=defaults.warmup if warmup is None else warmup,
                             runs=defaults.runs if runs is None else runs,
                             min_time_s=defaults.min_time if min_time is None else min_time)
    settings.validate()
    return settings


def _deployed_runtime(session: TargetSession, artifact: Artifact, remote_dir: str, folder: Path) -> dict:
    """The runtime recorded by the deploy, after checking every file on the target is the artifact's."""
    listing = session.helper("prepare", remote_dir, "existing", label=f"checking {remote_dir}")
    present = listing["files"]
    stale = [item.name for item in artifact.files if present.get(item.name, {}).get("sha256") != item.sha256]
    if stale or RECEIPT not in present:
        raise DeployError(f"artifact {artifact.artifact_id} is not (completely) deployed on {session.target}"
                          + (f": {', '.join(stale)} missing or different" if stale else ""),
                          f"deploy it first: toolchain deploy --artifact {artifact.directory}")
    session.transport.get(f"{remote_dir}/{RECEIPT}", folder / RECEIPT)
    return json.loads((folder / RECEIPT).read_text())["runtime"]


def check_measured(document: dict, artifact: Artifact, emulated: bool) -> None:
    """Refuse a schema-valid result that did not measure this artifact's files on this kind of target."""
    if document["target"]["emulated"] != emulated:
        raise BenchmarkError("the result's emulated flag does not match the target profile",
                             "redeploy the agent and rerun")
    hashes = {item.name: item.sha256 for item in artifact.files}
    for entry in document["results"]:
        if hashes.get(VARIANT_FILES.get(entry["variant"], "")) != entry["model_sha256"]:
            raise BenchmarkError(f"the target measured a {entry['variant']} model whose sha256 is not the "
                                 "artifact's", "redeploy the artifact and rerun")


class _AgentStderr(AgentStderr):
    """The agent's stderr over SSH, with the failure message a remote run needs."""

    def failure(self, target: str, failed: CommandFailedError) -> BenchmarkError:
        """The agent's own ERROR message, else how it ended and its last line of other output."""
        if self.error_message is not None:
            reason = f"failed: {self.error_message}"
        else:
            # the lines streamed through this object, less the PROGRESS events
            detail = last_line("\n".join(self.other)) if self.other else last_line(failed.stderr)
            reason = describe_exit(failed.exit_status) + (f": {detail}" if detail else "")
        return BenchmarkError(f"the benchmark agent on {target} {reason}",
                              "nothing was stored; fix the cause and rerun the bench")


def bench_remote(profile: TargetProfile, artifact_dir: Path, settings: BenchSettings | None = None, *,
                 accept_new_host_key: bool = False, on_message: Messages = lambda _: None,
                 on_progress: ProgressCallback = lambda _: None) -> BenchRun:
    """Run the agent on the target against a deployed artifact; store and return the checked result."""
    settings = settings or bench_settings(profile)
    settings.validate()
    artifact = load_artifact(artifact_dir)
    started = datetime.now(timezone.utc)
    stderr = _AgentStderr(on_progress)
    with open_transport(profile, accept_new_host_key=accept_new_host_key) as transport, \
            tempfile.TemporaryDirectory(prefix="toolchain-bench-") as scratch:
        session = TargetSession(transport, profile)
        session.read_facts()
        remote_dir = session.remote_path(artifact.artifact_id)
        with session.locked(f"bench of {artifact.model} {artifact.artifact_id}"):
            runtime = _deployed_runtime(session, artifact, remote_dir, Path(scratch))
            output = f"{remote_dir}/bench-{started:%Y%m%dT%H%M%SZ}.json"
            on_message(f"running the agent on {transport.target}: threads {','.join(map(str, settings.threads))}, "
                       f"warmup {settings.warmup}, runs {settings.runs}"
                       + (" (EMULATED: latency is qemu's, not the Bluebox's)" if profile.emulated else ""))
            command = agent_command(profile.python, f"{remote_dir}/{AGENT_NAME}", remote_dir, settings, output,
                                    emulated=profile.emulated)
            env = {"PYTHONPATH": runtime["pythonpath"]} if runtime.get("pythonpath") else None
            try:
                transport.run(command, env=env, timeout=profile.bench.timeout, label="the benchmark agent",
                              on_stderr_line=stderr)
            except CommandFailedError as failed:
                raise stderr.failure(transport.target, failed) from None
            fetched = Path(scratch) / "result.json"
            transport.get(output, fetched)
        try:
            document = json.loads(fetched.read_text())
        except ValueError as exc:
            raise BenchmarkError(f"the agent's result is not valid JSON: {exc}", "rerun the bench") from None
    validate_result(document)
    check_measured(document, artifact, profile.emulated)
    found = agreement(document, host_predictions(artifact.directory))
    document["artifact"] = {"artifact_id": artifact.artifact_id, "model": artifact.model,
                            "folder": str(artifact.directory), "target": profile.name}
    document["agreement"] = [item.to_dict() for item in found]
    document["remote"] = {"profile": profile.name, "address": profile.address, "emulated": profile.emulated,
                          "remote_dir": remote_dir, "runtime": runtime,
                          "fetched": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "agreement_threshold_pct": AGREEMENT_THRESHOLD_PCT}
    path = result_path(artifact.directory, profile.name, started)
    atomic_write_json(path, document)
    return BenchRun(path, document, found)


# --- `toolchain target bench`: several models, one summary ------------------------------------


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
        host = read_manifest(bench.folder).get("accuracy", {})
        agreed = {(item.variant, item.threads, item.batch): item.agreement_pct for item in bench.run.agreements}
        for entry in bench.run.document["results"]:
            latency = entry["latency_ms"]
            rows.append({"model": bench.model, "emulated": bench.run.document["target"]["emulated"],
                         "variant": entry["variant"], "threads": entry["threads"],
                         "batch": entry["batch"], "p50_ms": latency["p50"], "p90_ms": latency["p90"],
                         "p99_ms": latency["p99"], "throughput_ips": entry["throughput_ips"],
                         "top1_target": entry["accuracy"]["top1"],
                         "top1_host": host.get(entry["variant"], {}).get("top1"),
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
