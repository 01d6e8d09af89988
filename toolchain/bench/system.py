"""One benchmark flow, two places it runs (TVM's LocalSession / RPCSession, Olive's systems): both over Transport.

A system makes sure the agent is on its side (this machine: the package folder itself; a target: the
folder the bootstrap installs), says where the models and the result file are there, and runs the
agent over its Transport; the flow streams the agent's PROGRESS lines, fetches and checks the result,
checks that it measured the artifact's files and stores it beside the manifest as
bench/<target>-<UTC time>.json. Local and remote results share one schema; a remote one adds ``remote``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Mapping, Sequence

from toolchain.artifacts import EVALSET_NAME, FP32_NAME
from toolchain.bench.results import (AGREEMENT_THRESHOLD_PCT, VARIANT_FILES, AgentStderr, BenchRun,
                                     ProgressCallback, agreement, check_measured, host_predictions, result_path,
                                     validate_result)
from toolchain.bench.peak import (Peak, annotate, compute_section, measured_int8_peak, measured_peak,
                                 spec_peak)
from toolchain.bench.settings import QUICK_LATENCY, BenchSettings
from toolchain.errors import BenchmarkError, CommandFailedError, DeployError, UsageError
from toolchain.fsutil import atomic_write_json
from toolchain.remote.agent_package import AGENT_DIR, BENCH_AGENT
from toolchain.artifacts import Artifact, load_artifact
from toolchain.remote.deploy import RECEIPT
from toolchain.remote.session import TargetSession
from toolchain.remote.target import TargetProfile, open_transport
from toolchain.transport import LocalTransport, Transport

LOCAL_TARGET = "local"

Messages = Callable[[str], None]


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


@dataclass
class AgentRun:
    """One run of the agent as a system places it: its transport, and every path as that side sees it."""

    transport: Transport
    python: str
    agent: str
    models: str | Mapping[str, str]
    output: str
    evalset: str | None = None
    env: Mapping[str, str] | None = None
    timeout: float | None = None
    emulated: bool = False
    #: what "the benchmark agent" is in messages: "" here, " on <target>" elsewhere
    where: str = ""
    #: keys the stored result gets beside the common ones (a target's ``remote``)
    extra: dict[str, Any] = field(default_factory=dict)


def run_agent(run: AgentRun, settings: BenchSettings, on_progress: ProgressCallback) -> dict[str, Any]:
    """Run the agent, streaming its PROGRESS events; fetch its result and check it against the schema."""
    stderr = AgentStderr(on_progress)
    command = agent_command(run.python, run.agent, run.models, settings, run.output, emulated=run.emulated,
                            evalset=run.evalset)
    try:
        run.transport.run(command, env=run.env, timeout=run.timeout, label="the benchmark agent",
                          on_stderr_line=stderr)
    except CommandFailedError as failed:
        raise stderr.failure(run.where, failed) from None
    with tempfile.TemporaryDirectory(prefix="toolchain-bench-") as scratch:
        fetched = Path(scratch) / "result.json"
        run.transport.get(run.output, fetched)
        try:
            document = json.loads(fetched.read_text())
        except ValueError as exc:
            raise BenchmarkError(f"the agent's result is not valid JSON: {exc}", "rerun the bench") from None
    return validate_result(document)


class BenchSystem(ABC):
    """Where the agent runs."""

    #: the result's target label (bench/<name>-<time>.json)
    name: str
    emulated: bool
    #: the host's name in a fleet's inventory (None: not part of a fleet run)
    host: str | None = None

    @abstractmethod
    def artifact(self, source: Path | Artifact) -> Artifact:
        """The artifact to measure, read as this system needs it."""

    @abstractmethod
    def place(self, artifact: Artifact, started: datetime) -> ContextManager[AgentRun]:
        """A context in which the agent can run against the artifact (a target holds its lock meanwhile)."""

    def spec_peak(self, threads: Sequence[int]) -> Peak | None:
        """The peak GFLOP/s per thread count from the CPU's spec, where no GEMM can be measured (None: no spec)."""
        return None


class LocalSystem(BenchSystem):
    """This machine: the agent runs from the package folder with this Python, on the artifact folder itself."""

    name = LOCAL_TARGET
    emulated = False

    def artifact(self, source: Path | Artifact) -> Artifact:
        # the agent hashes what it measures and the flow compares with the manifest: no second pass here
        return source if isinstance(source, Artifact) else load_artifact(source, verify=False)

    @contextmanager
    def place(self, artifact: Artifact, started: datetime) -> Iterator[AgentRun]:
        with tempfile.TemporaryDirectory(prefix="toolchain-bench-") as scratch:
            yield AgentRun(LocalTransport(), sys.executable, str(AGENT_DIR / BENCH_AGENT), str(artifact.directory),
                           f"{scratch}/result.json")


class TargetSystem(BenchSystem):
    """A target profile's machine (SSH, or `--host local`): the agent runs from its installed folder there."""

    def __init__(self, profile: TargetProfile, *, accept_new_host_key: bool = False, break_lock: bool = False,
                 host: str | None = None) -> None:
        self.profile = profile
        self.name = profile.name
        #: the host's name in a fleet's inventory: kept in the result (``remote.host``) and its file name,
        #: so hosts of one profile benched at the same second never share a record
        self.host = host
        self.emulated = profile.emulated
        self.accept_new_host_key = accept_new_host_key
        self.break_lock = break_lock

    def artifact(self, source: Path | Artifact) -> Artifact:
        return source if isinstance(source, Artifact) else load_artifact(source)

    def spec_peak(self, threads: Sequence[int]) -> Peak | None:
        profile = self.profile
        return spec_peak(profile.cpu, profile.clock_ghz, profile.fp32_flops_per_cycle, profile.name, threads)

    @contextmanager
    def place(self, artifact: Artifact, started: datetime) -> Iterator[AgentRun]:
        profile = self.profile
        with open_transport(profile, accept_new_host_key=self.accept_new_host_key) as transport:
            session = TargetSession(transport, profile)
            session.read_facts()
            remote_dir = session.remote_path(artifact.artifact_id)
            with session.locked(f"bench of {artifact.model} {artifact.artifact_id}", break_lock=self.break_lock):
                runtime = deployed_runtime(session, artifact, remote_dir)
                remote = {"profile": profile.name, "address": profile.address, "emulated": profile.emulated,
                          "remote_dir": remote_dir, "runtime": runtime,
                          "agreement_threshold_pct": AGREEMENT_THRESHOLD_PCT}
                if self.host:
                    remote["host"] = self.host
                yield AgentRun(transport, session.python, session.agent_script(), remote_dir,
                               f"{remote_dir}/bench-{started:%Y%m%dT%H%M%SZ}.json",
                               env={"PYTHONPATH": runtime["pythonpath"]} if runtime.get("pythonpath") else None,
                               timeout=profile.bench.timeout, emulated=profile.emulated,
                               where=f" on {transport.target}", extra={"remote": remote})
                remote["fetched"] = datetime.now(timezone.utc).isoformat(timespec="seconds")


def deployed_runtime(session: TargetSession, artifact: Artifact, remote_dir: str) -> dict[str, Any]:
    """The runtime recorded by the deploy, after checking every file on the target is the artifact's."""
    listing = session.helper("prepare", remote_dir, "existing", label=f"checking {remote_dir}")
    present = listing["files"]
    stale = [item.name for item in artifact.files if present.get(item.name, {}).get("sha256") != item.sha256]
    if stale or RECEIPT not in present:
        raise DeployError(f"artifact {artifact.artifact_id} is not (completely) deployed on {session.target}"
                          + (f": {', '.join(stale)} missing or different" if stale else ""),
                          f"deploy it first: toolchain deploy --artifact {artifact.directory}")
    with tempfile.TemporaryDirectory(prefix="toolchain-bench-") as scratch:
        session.transport.get(f"{remote_dir}/{RECEIPT}", Path(scratch) / RECEIPT)
        return json.loads((Path(scratch) / RECEIPT).read_text())["runtime"]


def bench(system: BenchSystem, source: Path | Artifact, settings: BenchSettings, *,
          on_message: Messages = lambda _: None, on_progress: ProgressCallback = lambda _: None) -> BenchRun:
    """Measure an artifact's models where `system` says; store and return the checked result."""
    settings.validate()
    artifact = system.artifact(source)
    started = datetime.now(timezone.utc)
    with system.place(artifact, started) as run:
        on_message(f"running the agent on {run.transport.target}: threads {','.join(map(str, settings.threads))}, "
                   f"warmup {settings.warmup}, runs {settings.runs}"
                   + (" (EMULATED: latency is qemu's, not the Bluebox's)" if system.emulated else ""))
        document = run_agent(run, settings, on_progress)
        check_measured(document, {item.name: item.sha256 for item in artifact.files}, system.emulated)
        compute = compute_record(system, run, document, artifact, settings.threads, on_message)
    found = agreement(document, host_predictions(artifact.directory), artifact.manifest.accuracy.ties)
    document["artifact"] = {"artifact_id": artifact.artifact_id, "model": artifact.model,
                            "folder": str(artifact.directory), "target": system.name}
    document["agreement"] = [item.to_dict() for item in found]
    document["compute"] = compute
    annotate(document, compute)
    document.update(run.extra)
    path = result_path(artifact.directory, system.name, started, system.host)
    atomic_write_json(path, document)
    return BenchRun(path, document, found)


def compute_record(system: BenchSystem, run: AgentRun, document: dict[str, Any], artifact: Artifact,
                   threads: Sequence[int], on_message: Messages) -> dict[str, Any]:
    """MACs of the artifact and the peaks its rates are compared with, both measured where the agent ran: the
    float32 GEMM peak (FP32 rows; else the profile's spec) and the onnxruntime INT8 GEMM peak (INT8 rows; no
    spec exists, so none where it fails); none on an emulated target (qemu's speed is not the core's)."""
    from toolchain.graph.macs import MACS_SOURCE, graph_macs

    macs = graph_macs(artifact.directory / FP32_NAME)
    if system.emulated:
        emulated = "emulated target: no peak (qemu's speed is not the core's)"
        return compute_section(macs, MACS_SOURCE, None, emulated, None, emulated)
    timeout = run.timeout or 300.0
    note: str | None = None
    try:
        peak: Peak | None = measured_peak(run.transport, run.python, document["target"], threads, env=run.env,
                                          timeout=timeout)
    except BenchmarkError as error:
        on_message(f"{error.message}; using the profile's CPU spec where it has one")
        peak = system.spec_peak(threads)
        note = None if peak else f"no peak: {error.message}"
    int8_note: str | None = None
    try:
        int8_peak: Peak | None = measured_int8_peak(run.transport, run.python, document["target"], threads,
                                                    env=run.env, timeout=timeout)
    except BenchmarkError as error:
        on_message(f"{error.message}; INT8 rows get no % of peak (no profile gives an INT8 spec)")
        int8_peak, int8_note = None, f"no INT8 peak: {error.message} (no INT8 spec to fall back on)"
    return compute_section(macs, MACS_SOURCE, peak, note, int8_peak, int8_note)


def bench_local(artifact_dir: Path | Artifact, settings: BenchSettings,
                on_progress: ProgressCallback = lambda _: None) -> BenchRun:
    """Run the agent on this machine against an artifact; store and return the checked result."""
    return bench(LocalSystem(), artifact_dir, settings, on_progress=on_progress)


def bench_remote(profile: TargetProfile, artifact_dir: Path | Artifact, settings: BenchSettings | None = None, *,
                 accept_new_host_key: bool = False, break_lock: bool = False, on_message: Messages = lambda _: None,
                 on_progress: ProgressCallback = lambda _: None) -> BenchRun:
    """Run the agent on the profile's target against a deployed artifact; store and return the checked result."""
    return bench(TargetSystem(profile, accept_new_host_key=accept_new_host_key, break_lock=break_lock), artifact_dir,
                 settings or profile.bench.with_overrides(), on_message=on_message, on_progress=on_progress)


def measure_files(models: Mapping[str, Path], evalset: Path, settings: BenchSettings = QUICK_LATENCY, *,
                  on_progress: ProgressCallback = lambda _: None) -> dict[str, Any]:
    """Time model files on this machine with the agent (over LocalTransport); its checked result document.

    `models` maps a variant name (fp32, int8) to an .onnx file; `evalset` is an .npz with float32 NCHW
    ``images`` and int ``labels`` (an artifact's evalset.npz). Nothing is stored.
    """
    settings.validate()
    with tempfile.TemporaryDirectory(prefix="toolchain-measure-") as scratch:
        run = AgentRun(LocalTransport(), sys.executable, str(AGENT_DIR / BENCH_AGENT),
                       {variant: str(path) for variant, path in models.items()}, f"{scratch}/result.json",
                       evalset=str(evalset))
        return run_agent(run, settings, on_progress)
