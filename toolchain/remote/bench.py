"""Remote bench: run the benchmark agent on the target, stream its progress, fetch and check its result.

The agent is the same file the host pipeline uses locally (toolchain/remote/agent/bench_agent.py) with
the same JSON schema; it was uploaded by `deploy` beside the models. The result lands beside the
artifact's manifest, in `bench/<target>-<timestamp>.json`, with the target's facts (as the agent
measured them), the remote context and the top-1 agreement of the target's predictions with the
host's predictions stored in the eval set.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from toolchain.errors import BenchmarkError, CommandFailedError, DeployError
from toolchain.fsutil import atomic_write_json
from toolchain.remote.deploy import AGENT_NAME, RECEIPT, Artifact, load_artifact
from toolchain.remote.session import TargetSession
from toolchain.remote.target import TargetProfile, open_transport
from toolchain.transport.base import describe_exit, last_line

RESULT_SCHEMA = "toolchain.bench/1"
BENCH_DIR = "bench"
VARIANT_FILES = {"fp32": "model.fp32.onnx", "int8": "model.int8.onnx"}
# the target's top-1 answers must match the host's on at least this share of the eval set
AGREEMENT_THRESHOLD_PCT = 99.0
_PROGRESS, _ERROR = "PROGRESS ", "ERROR "

Messages = Callable[[str], None]
ProgressCallback = Callable[[dict], None]


@dataclass(frozen=True)
class RemoteBenchSettings:
    """How the agent measures: the profile's [bench] defaults unless overridden."""

    threads: tuple[int, ...]
    batch: int
    warmup: int
    runs: int
    min_time: float
    timeout: float

    @classmethod
    def from_profile(cls, profile: TargetProfile, **overrides: Any) -> "RemoteBenchSettings":
        bench = profile.bench
        values = {"threads": bench.threads, "batch": bench.batch, "warmup": bench.warmup, "runs": bench.runs,
                  "min_time": bench.min_time, "timeout": bench.timeout}
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(threads=tuple(values["threads"]), batch=values["batch"], warmup=values["warmup"],
                   runs=values["runs"], min_time=values["min_time"], timeout=values["timeout"])


@dataclass(frozen=True)
class Agreement:
    """Top-1 agreement of one target result with the host's predictions of the same variant."""

    variant: str
    threads: int
    batch: int
    agreement_pct: float
    target_top1: float
    host_top1: float
    count: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RemoteBenchResult:
    """A finished remote bench: the stored document and where it is."""

    path: Path
    document: dict
    agreements: list[Agreement] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def emulated(self) -> bool:
        return bool(self.document["target"].get("emulated"))


def agent_argv(profile: TargetProfile, remote_dir: str, output: str, settings: RemoteBenchSettings) -> list[str]:
    """The agent's command line on the target (same flags as the local bench)."""
    argv = [profile.python, f"{remote_dir}/{AGENT_NAME}"]
    for variant, name in VARIANT_FILES.items():
        argv += ["--model", f"{variant}={remote_dir}/{name}"]
    argv += ["--evalset", f"{remote_dir}/evalset.npz", "--threads", ",".join(map(str, settings.threads)),
             "--batch", str(settings.batch), "--warmup", str(settings.warmup), "--runs", str(settings.runs),
             "--min-time", f"{settings.min_time:g}", "--output", output, "--progress"]
    return argv + (["--emulated"] if profile.emulated else [])


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


def check_result(document: dict, artifact: Artifact, emulated: bool) -> None:
    """Refuse a result that is not the agent's schema or not a measurement of this artifact's files."""
    if document.get("schema") != RESULT_SCHEMA:
        raise BenchmarkError(f"the agent wrote schema {document.get('schema')!r}, expected {RESULT_SCHEMA!r}",
                             "the agent on the target is out of date: redeploy")
    if bool(document.get("target", {}).get("emulated")) != emulated:
        raise BenchmarkError("the result's emulated flag does not match the target profile",
                             "redeploy the agent and rerun")
    hashes = {item.name: item.sha256 for item in artifact.files}
    results = document.get("results") or []
    if not results:
        raise BenchmarkError("the agent's result holds no measurements", "rerun the bench")
    for entry in results:
        expected = hashes.get(VARIANT_FILES.get(entry.get("variant"), ""))
        if expected is None or entry.get("model_sha256") != expected:
            raise BenchmarkError(f"the target measured a {entry.get('variant')} model whose sha256 is not the "
                                 "artifact's", "redeploy the artifact and rerun")


def agreements(document: dict, evalset: Path) -> list[Agreement]:
    """Per result: how often the target's top-1 equals the host's, and both accuracies."""
    with np.load(evalset) as data:
        labels = data["labels"]
        host = {variant: data[f"pred_{variant}"] for variant in VARIANT_FILES}
    found = []
    for entry in document["results"]:
        predictions = np.asarray(entry["predictions"], dtype=np.int64)
        reference = host[entry["variant"]]
        if predictions.shape != reference.shape:
            raise BenchmarkError(f"the target returned {predictions.size} predictions for {reference.size} images",
                                 "redeploy the artifact and rerun")
        found.append(Agreement(entry["variant"], int(entry["threads"]), int(entry["batch"]),
                               float((predictions == reference).mean() * 100.0),
                               float((predictions == labels).mean() * 100.0),
                               float((reference == labels).mean() * 100.0), int(labels.size)))
    return found


def bench_remote(profile: TargetProfile, artifact_dir: Path, settings: RemoteBenchSettings | None = None, *,
                 accept_new_host_key: bool = False, on_message: Messages = lambda _: None,
                 on_progress: ProgressCallback = lambda _: None) -> RemoteBenchResult:
    """Run the agent on the target against a deployed artifact; store and return the checked result."""
    started = time.perf_counter()
    settings = settings or RemoteBenchSettings.from_profile(profile)
    artifact = load_artifact(artifact_dir)
    stamp = datetime.now(timezone.utc)
    run_id = stamp.strftime("%Y%m%dT%H%M%SZ")
    errors: list[dict] = []

    def stderr_line(line: str) -> None:
        if line.startswith(_PROGRESS):
            try:
                on_progress(json.loads(line[len(_PROGRESS):]))
            except ValueError:
                pass
        elif line.startswith(_ERROR):
            try:
                errors.append(json.loads(line[len(_ERROR):]))
            except ValueError:
                errors.append({"message": line[len(_ERROR):]})

    with open_transport(profile, accept_new_host_key=accept_new_host_key) as transport, \
            tempfile.TemporaryDirectory(prefix="toolchain-bench-") as scratch:
        session = TargetSession(transport, profile)
        session.read_facts()
        remote_dir = session.remote_path(artifact.artifact_id)
        with session.locked(f"bench of {artifact.model} {artifact.artifact_id}"):
            runtime = _deployed_runtime(session, artifact, remote_dir, Path(scratch))
            output = f"{remote_dir}/bench-{run_id}.json"
            on_message(f"running the agent on {transport.target}: threads {','.join(map(str, settings.threads))}, "
                       f"warmup {settings.warmup}, runs {settings.runs}"
                       + (" (EMULATED: latency is qemu's, not the Bluebox's)" if profile.emulated else ""))
            env = {"PYTHONPATH": runtime["pythonpath"]} if runtime.get("pythonpath") else None
            try:
                transport.run(agent_argv(profile, remote_dir, output, settings), env=env, timeout=settings.timeout,
                              label="the benchmark agent", on_stderr_line=stderr_line)
            except CommandFailedError as failure:
                if errors:
                    reason = f"failed: {errors[-1].get('message', '')}"
                else:
                    output = [line for line in failure.stderr.splitlines() if not line.startswith(_PROGRESS)]
                    detail = last_line("\n".join(output))
                    reason = describe_exit(failure.exit_status) + (f": {detail}" if detail else "")
                raise BenchmarkError(f"the benchmark agent on {transport.target} {reason}",
                                     "nothing was stored; fix the cause and rerun the bench") from None
            fetched = Path(scratch) / "result.json"
            transport.get(output, fetched)
        try:
            document = json.loads(fetched.read_text())
        except ValueError as exc:
            raise BenchmarkError(f"the agent's result is not valid JSON: {exc}", "rerun the bench") from None
    check_result(document, artifact, profile.emulated)
    found = agreements(document, artifact.directory / "evalset.npz")
    document["remote"] = {"profile": profile.name, "address": profile.address, "emulated": profile.emulated,
                          "artifact_id": artifact.artifact_id, "model": artifact.model, "remote_dir": remote_dir,
                          "runtime": runtime, "fetched": stamp.isoformat(timespec="seconds"),
                          "agreement_threshold_pct": AGREEMENT_THRESHOLD_PCT,
                          "agreement": [item.to_dict() for item in found]}
    path = artifact.directory / BENCH_DIR / f"{profile.name}-{run_id}.json"
    atomic_write_json(path, document)
    return RemoteBenchResult(path, document, found, time.perf_counter() - started)
