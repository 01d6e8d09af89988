"""A fleet run: deploy or bench on every selected host of an inventory, at most `forks` at once.

Each host runs in a worker thread of its own with its own connections (paramiko is thread-safe per
connection); a host that fails is recorded with its error and the others go on. Ctrl-C stops the run: hosts
not started yet are not started, the connections of running hosts are closed (their commands end, the
target's lock helper sees its stdin close and gives the lock up, uploads under temporary names are swept
by the next deploy), and the record of the run is written, atomically, with those hosts as `interrupted`.

The record of the newest run per action lives at <artifacts>/fleet/last-<action>.json; `--retry-failed`
reruns the hosts it lists as failed or interrupted and merges their new results into it.
"""

from __future__ import annotations

import re
import shlex
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from toolchain.artifacts import Artifact
from toolchain.errors import ConnectionDroppedError, DeployError, InventoryError, ToolchainError
from toolchain.fleet.inventory import InventoryHost
from toolchain.fsutil import atomic_write_json
from toolchain.remote.provision import TargetPlatform, WheelFile, WheelIndex
from toolchain.remote.target import TargetProfile, load_profile, watching_transports
from toolchain.transport import Transport

RECORD_SCHEMA = "toolchain.fleet/1"
FLEET_DIR = "fleet"
OK, FAILED, INTERRUPTED = "ok", "failed", "interrupted"
DEPLOY, BENCH = "deploy", "bench"
# how long Ctrl-C waits for running hosts to close their sessions
_CLOSE_GRACE_S = 30.0

# (host name, what happened: "message" | "progress" | "done", its data)
FleetEvent = Callable[[str, str, Any], None]


@dataclass(frozen=True)
class FleetOptions:
    """The command line's connection defaults; an inventory variable of the host wins over them (as in Ansible)."""

    target: str | None = None
    identity_file: Path | None = None
    known_hosts: Path | None = None
    jump: str | None = None
    workdir: str | None = None
    python: str | None = None
    accept_new_host_key: bool = False
    break_lock: bool = False


@dataclass
class HostResult:
    """What one host's part of the run did."""

    host: str
    status: str
    address: str = ""
    profile: str = ""
    emulated: bool = False
    started: str = ""
    seconds: float = 0.0
    error: str | None = None
    hint: str | None = None
    deployed: bool = False
    bytes_sent: int = 0
    bench_record: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: how the connection went: "" (directly), "jump host user@bastion:22[, ...]" or "ProxyCommand"
    via: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "status": self.status, "address": self.address, "via": self.via,
                "profile": self.profile,
                "emulated": self.emulated, "started": self.started, "seconds": round(self.seconds, 3),
                "error": self.error, "hint": self.hint, "deployed": self.deployed, "bytes_sent": self.bytes_sent,
                "bench_record": self.bench_record, "rows": self.rows}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HostResult":
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


@dataclass
class FleetRun:
    """One fleet run: per-host results, wall time, and the sum of the hosts' own times."""

    action: str
    inventory: str
    artifact_id: str
    model: str
    forks: int
    started: str
    artifact: str = ""
    wall_s: float = 0.0
    interrupted: bool = False
    results: list[HostResult] = field(default_factory=list)

    @property
    def failed(self) -> list[HostResult]:
        return [result for result in self.results if result.status != OK]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": RECORD_SCHEMA, "action": self.action, "inventory": self.inventory,
                "artifact": self.artifact, "artifact_id": self.artifact_id, "model": self.model, "forks": self.forks, "started": self.started,
                "wall_s": round(self.wall_s, 3), "hosts_s": round(sum(item.seconds for item in self.results), 3),
                "interrupted": self.interrupted, "failed": [item.host for item in self.failed],
                "hosts": [item.to_dict() for item in self.results]}


# --- a host of the inventory as a target profile ----------------------------------------------


def _jump_of(args: str) -> str | None:
    """The ProxyJump in ansible_ssh_common_args (`-o ProxyJump=X`, `-oProxyJump X`, `-J X`)."""
    words = shlex.split(args)
    for index, word in enumerate(words):
        following = words[index + 1] if index + 1 < len(words) else ""
        if word == "-J":
            return following or None
        if word.startswith("-J"):
            return word[2:]
        option = word[2:] if word.startswith("-o") and len(word) > 2 else following if word == "-o" else ""
        match = re.fullmatch(r"(?i)proxyjump[= ]\s*(\S+)", option.strip())
        if match:
            return match.group(1)
    return None


def host_profile(host: InventoryHost, options: FleetOptions) -> TargetProfile:
    """The profile one inventory host runs with: its `toolchain_target` (else --target, else linux), reached at
    its ansible_host (else its name; a provider's profile such as `emulated` brings its own address)."""
    from toolchain.providers import resolve_profile

    values = host.vars

    def text(key: str) -> str | None:
        value = values.get(key)
        return None if value is None else str(value)

    reference = text("toolchain_target") or options.target
    address = text("ansible_host")
    if address is None and load_profile(reference).emulation is None:
        address = host.name
    port = values.get("ansible_port")
    if port is not None and (isinstance(port, bool) or not str(port).isdigit() or not 0 < int(port) < 65536):
        raise InventoryError(f"host {host.name}: ansible_port={port!r} is not a port", "give a number 1-65535")
    jump = text("toolchain_jump") or (_jump_of(str(values["ansible_ssh_common_args"]))
                                      if values.get("ansible_ssh_common_args") else None) or options.jump
    key = text("ansible_ssh_private_key_file") or text("ansible_private_key_file")
    known = text("toolchain_known_hosts")
    return resolve_profile(reference, host=address, port=int(port) if port is not None else None,
                           user=text("ansible_user"), identity_file=Path(key).expanduser() if key else options.identity_file,
                           known_hosts=Path(known).expanduser() if known else options.known_hosts, proxy_jump=jump,
                           workdir=text("toolchain_workdir") or options.workdir,
                           python=text("ansible_python_interpreter") or options.python)


def route_of(profile: TargetProfile) -> str:
    """How a profile's connections go: through its ProxyJump hops (outermost first), its ProxyCommand, or ""."""
    if profile.jumps:
        return "jump host " + ", ".join(f"{hop.user + '@' if hop.user else ''}{hop.host}:{hop.port}"
                                        for hop in profile.jumps)
    return "ProxyCommand" if profile.proxy_command else ""


# --- one host's work --------------------------------------------------------------------------


class SerialWheelIndex(WheelIndex):
    """One wheel cache shared by the fleet's threads: listings and downloads one at a time (its lock file is
    read, changed and rewritten)."""

    def __init__(self, index: WheelIndex) -> None:
        super().__init__(index.cache_dir, index.index_url, index.wheel_dir)
        self._lock = threading.Lock()

    def files(self, package: str) -> list[WheelFile]:
        with self._lock:
            return super().files(package)

    def fetch(self, wheel: WheelFile, platform: TargetPlatform) -> Path:
        with self._lock:
            return super().fetch(wheel, platform)


def is_deployed(profile: TargetProfile, artifact: Artifact, options: FleetOptions) -> bool:
    """Whether the target has every file of the artifact (and its deploy receipt), changing nothing there."""
    from toolchain.bench.system import deployed_runtime
    from toolchain.remote.session import TargetSession
    from toolchain.remote.target import open_transport

    with open_transport(profile, accept_new_host_key=options.accept_new_host_key) as transport:
        session = TargetSession(transport, profile)
        session.read_facts()
        try:
            deployed_runtime(session, artifact, session.remote_path(artifact.artifact_id))
        except DeployError:
            return False
    return True


def _summary_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    agreed = {(item["variant"], item["threads"]): item.get("agreement_pct") for item in document.get("agreement", [])}
    return [{"variant": entry["variant"], "threads": entry["threads"], "batch": entry["batch"],
             "p50_ms": entry["latency_ms"]["p50"], "p90_ms": entry["latency_ms"]["p90"],
             "throughput_ips": entry["throughput_ips"], "top1": entry["accuracy"]["top1"],
             "agreement_pct": agreed.get((entry["variant"], entry["threads"]))} for entry in document["results"]]


def _host_work(action: str, host: InventoryHost, artifact: Artifact, bench_overrides: dict[str, Any],
               options: FleetOptions, index: WheelIndex, result: HostResult, on_event: FleetEvent) -> None:
    from toolchain.bench.system import TargetSystem, bench
    from toolchain.remote.deploy import deploy

    def message(text: str) -> None:
        on_event(host.name, "message", text)

    def uploaded(name: str, done: int, total: int) -> None:
        on_event(host.name, "progress", {"phase": f"upload {name}", "done": done, "total": total})

    profile = host_profile(host, options)
    result.address, result.profile, result.emulated = profile.address, profile.name, profile.emulated
    result.via = route_of(profile)
    needs_deploy = action == DEPLOY
    if action == BENCH:
        message("checking the deployed artifact")
        needs_deploy = not is_deployed(profile, artifact, options)
        if needs_deploy:
            message(f"artifact {artifact.artifact_id} is not there: deploying it first")
    if needs_deploy:
        report = deploy(profile, artifact, accept_new_host_key=options.accept_new_host_key,
                        break_lock=options.break_lock, index=index, on_message=message, on_progress=uploaded)
        result.deployed, result.bytes_sent = True, report.bytes_sent
        message(f"deployed: {report.bytes_sent:,} bytes sent")
    if action == BENCH:
        system = TargetSystem(profile, accept_new_host_key=options.accept_new_host_key,
                              break_lock=options.break_lock, host=host.name)
        run = bench(system, artifact, profile.bench.with_overrides(**bench_overrides),
                    on_message=message, on_progress=lambda event: on_event(host.name, "progress", event))
        result.bench_record = str(run.path)
        result.rows = _summary_rows(run.document)


# --- the run ----------------------------------------------------------------------------------


class _Cancel:
    """The run's open transports, closed all at once on Ctrl-C; new ones are refused after that."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: list[Transport] = []
        self.cancelled = threading.Event()

    def opened(self, transport: Transport) -> None:
        with self._lock:
            if self.cancelled.is_set():
                raise ConnectionDroppedError(f"{transport.target}: not connecting: the fleet run was interrupted",
                                             "rerun with --retry-failed to finish the interrupted hosts")
            self._open.append(transport)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled.set()
            transports, self._open = self._open, []
        for transport in transports:
            try:
                transport.cancel()
            except Exception:  # paramiko closing an already broken link: nothing is left to release
                pass


def run_fleet(action: str, hosts: list[InventoryHost], artifact: Artifact, *, forks: int,
              bench_overrides: dict[str, Any] | None = None, options: FleetOptions = FleetOptions(),
              index: WheelIndex | None = None, inventory: Path | None = None,
              on_event: FleetEvent = lambda *_: None,
              on_finish: Callable[[FleetRun], None] = lambda _: None) -> FleetRun:
    """Run `action` (deploy or bench) on every host, at most `forks` at once; a host's failure does not stop
    the others. `bench_overrides` (threads, batch, warmup, runs, min_time_s; None: the profile's) go over
    each host's profile. `on_finish` gets the run once it ended, interrupted or not (to record it). On
    KeyboardInterrupt the run is stopped as the module docstring says, and it propagates."""
    if forks < 1:
        raise ValueError("forks must be at least 1")
    run = FleetRun(action, str(inventory or ""), artifact.artifact_id, artifact.model, forks,
                   datetime.now(timezone.utc).isoformat(timespec="seconds"), artifact=str(artifact.directory))
    results = {host.name: HostResult(host.name, INTERRUPTED, error="not started: the run was interrupted")
               for host in hosts}
    run.results = list(results.values())
    cancel = _Cancel()
    shared = SerialWheelIndex(index or WheelIndex())

    def work(host: InventoryHost) -> None:
        result = results[host.name]
        if cancel.cancelled.is_set():
            return
        result.status, result.error = INTERRUPTED, "interrupted"
        result.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        on_event(host.name, "message", "connecting")
        began = time.perf_counter()
        try:
            with watching_transports(cancel.opened):
                _host_work(action, host, artifact, bench_overrides or {}, options, shared, result, on_event)
            result.status, result.error = OK, None
        except ToolchainError as error:
            result.status = INTERRUPTED if cancel.cancelled.is_set() else FAILED
            result.error, result.hint = error.message, error.hint
        except Exception as error:  # a library's exception no boundary wrapped: this host's failure, not the run's
            from toolchain.fsutil import disk_error

            disk = disk_error(error)
            result.status = INTERRUPTED if cancel.cancelled.is_set() else FAILED
            result.error = disk.message if disk else f"internal error: {type(error).__name__}: {error}"
            result.hint = disk.hint if disk else "rerun with --retry-failed; report it if it persists"
        finally:
            result.seconds = time.perf_counter() - began
            on_event(host.name, "done", result)

    began = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=forks, thread_name_prefix="fleet")
    futures: set[Future] = {pool.submit(work, host) for host in hosts}
    try:
        while futures:
            _, futures = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
    except BaseException:
        run.interrupted = True
        cancel.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        wait(futures, timeout=_CLOSE_GRACE_S)
        raise
    finally:
        pool.shutdown(wait=not run.interrupted)
        run.wall_s = time.perf_counter() - began
        on_finish(run)
    return run


# --- the record of the newest run -------------------------------------------------------------


def record_path(artifacts: Path, action: str) -> Path:
    return artifacts / FLEET_DIR / f"last-{action}.json"


def read_record(artifacts: Path, action: str) -> dict[str, Any]:
    """The newest run's record of this action (for --retry-failed)."""
    import json

    path = record_path(artifacts, action)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise InventoryError(f"no record of an earlier `toolchain fleet {action}` at {path}",
                             f"run `toolchain fleet {action}` without --retry-failed first") from None
    except (OSError, ValueError) as exc:
        raise InventoryError(f"cannot read the fleet record {path}: {exc}",
                             f"delete it and run `toolchain fleet {action}` without --retry-failed") from None
    if not isinstance(document, dict) or document.get("schema") != RECORD_SCHEMA or \
            not isinstance(document.get("hosts"), list):
        raise InventoryError(f"{path} is not a fleet record ({RECORD_SCHEMA})",
                             f"delete it and run `toolchain fleet {action}` without --retry-failed")
    return document


def save_record(artifacts: Path, run: FleetRun, previous: dict[str, Any] | None = None) -> Path:
    """Write the run's record atomically; with `previous` (a --retry-failed run), hosts not rerun keep theirs."""
    document = run.to_dict()
    if previous is not None:
        rerun = {item.host for item in run.results}
        kept = [HostResult.from_dict(item) for item in previous["hosts"] if item.get("host") not in rerun]
        merged = FleetRun(run.action, run.inventory, run.artifact_id, run.model, run.forks, run.started,
                          run.artifact, run.wall_s, run.interrupted, kept + run.results)
        document = {**merged.to_dict(), "retried": sorted(rerun)}
    path = record_path(artifacts, run.action)
    atomic_write_json(path, document)
    return path


def failed_hosts(record: dict[str, Any]) -> list[str]:
    """The hosts the record lists as failed or interrupted."""
    return [item["host"] for item in record["hosts"] if isinstance(item, dict) and item.get("status") != OK]
