"""A working session with one target: its facts, its lock, verified uploads, the helper operations.

Every step on the target goes through the target-side package (toolchain/agent/: installed once per
version by the bootstrap, then run by path; see toolchain.remote.agent_package) and the Transport
contract, so this module works the same over SSH and locally.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping, Sequence

from toolchain.artifacts import ArtifactFile
from toolchain.errors import (CommandFailedError, ConnectionDroppedError, DeployError, LockHeldError, TargetIncompatibleError,
                              TransportError)
from toolchain.remote.agent_package import (BENCH_AGENT, EXIT_BUSY, HELPER, UPLOAD_PREFIX, agent_package,
                                            bootstrap_command, stdin_program)
from toolchain.remote.target import TargetProfile
from toolchain.transport import BackgroundCommand, Transport

LOCK_NAME = ".lock"
_MB = 1 << 20

UploadProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RuntimeInfo:
    """onnxruntime and numpy as one Python environment on the target sees them."""

    onnxruntime: str | None = None
    numpy: str | None = None
    onnxruntime_error: str | None = None
    numpy_error: str | None = None

    @classmethod
    def from_helper(cls, data: Mapping[str, Any]) -> "RuntimeInfo":
        return cls(onnxruntime=data.get("onnxruntime"), numpy=data.get("numpy"),
                   onnxruntime_error=data.get("onnxruntime_error"), numpy_error=data.get("numpy_error"))


@dataclass(frozen=True)
class ProvisionedRuntime:
    """A runtime folder this tool installed on the target earlier (read from its marker file)."""

    directory: str
    onnxruntime: str
    numpy: str | None
    python_tag: str
    wheels: tuple[str, ...]


@dataclass(frozen=True)
class TargetFacts:
    """What the target says about itself (preflight reads these; nothing is assumed)."""

    hostname: str
    arch: str
    os: str
    kernel: str
    python: str
    python_executable: str
    glibc: str | None
    cpu_model: str
    cores: int | None
    workdir: str
    workdir_exists: bool
    free_bytes: int
    free_path: str
    writable: bool
    system_runtime: RuntimeInfo
    runtimes: tuple[ProvisionedRuntime, ...] = ()

    @classmethod
    def from_helper(cls, data: Mapping[str, Any]) -> "TargetFacts":
        runtimes = []
        for item in data.get("runtimes", []):
            marker = item.get("marker", {})
            if marker.get("onnxruntime") and marker.get("python_tag"):
                runtimes.append(ProvisionedRuntime(item["dir"], marker["onnxruntime"], marker.get("numpy"),
                                                   marker["python_tag"], tuple(marker.get("wheels", ()))))
        values = {key: data.get(key) for key in ("hostname", "arch", "os", "kernel", "python", "python_executable",
                                                 "glibc", "cpu_model", "cores", "workdir", "workdir_exists",
                                                 "free_bytes", "free_path", "writable")}
        return cls(**values, system_runtime=RuntimeInfo.from_helper(data.get("system_runtime", {})),
                   runtimes=tuple(runtimes))

    @property
    def python_version(self) -> tuple[int, int]:
        major, minor = self.python.split(".")[:2]
        return int(major), int(minor)

    @property
    def glibc_version(self) -> tuple[int, int] | None:
        if not self.glibc:
            return None
        major, minor = self.glibc.split(".")[:2]
        return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


# a file to place on the target under `name`, with the hash it must arrive with
LocalFile = ArtifactFile


@dataclass
class UploadResult:
    """What one verified upload did: files sent, files already there, bytes on the wire."""

    directory: str
    sizes: dict[str, int] = field(default_factory=dict)
    sent: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    removed_partial: list[str] = field(default_factory=list)


def _holder_record(text: str) -> dict[str, Any]:
    try:
        record = json.loads(text) if text else {}
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def describe_holder(holder: Mapping[str, Any]) -> str:
    """Who holds a lock, from its record: `a deploy of M from user@host (pid N) since T`."""
    if not holder.get("command"):
        return "another run"
    return (f"a {holder['command']} from {holder.get('user', '?')}@{holder.get('host', '?')} "
            f"(pid {holder.get('pid', '?')}) since {holder.get('since', '?')}")


def _heartbeat(process: BackgroundCommand, stop: threading.Event, interval: float) -> None:
    """One byte to the lock holder's stdin every `interval` s: the target keeps the lock while they arrive."""
    while not stop.wait(max(interval, 0.2)):
        if not process.send(b"\n"):
            return


def format_mb(size: int) -> str:
    return f"{size / _MB:.1f} MB"


class TargetSession:
    """One target, one transport: helper operations, the lock, verified uploads."""

    def __init__(self, transport: Transport, profile: TargetProfile) -> None:
        self.transport = transport
        self.profile = profile
        self.facts: TargetFacts | None = None
        #: the target's interpreter: the profile's first until the preflight finds the one it has
        self.python = profile.python
        #: the holder record of a lock that `locked(break_lock=True)` broke
        self.broken_lock: dict[str, Any] | None = None
        self._agent_dir: str | None = None

    @property
    def target(self) -> str:
        return self.transport.target

    def agent_dir(self) -> str:
        """The target's folder of this version's target-side package, installed first if it is not there."""
        if self._agent_dir is None:
            timeout = self.profile.command_timeout
            answer = self.transport.run(bootstrap_command(self.python, self.profile.workdir),
                                        timeout=timeout, label="looking for the toolchain agent").json()
            if not answer["ready"]:
                answer = self.transport.run(bootstrap_command(self.python, self.profile.workdir, True),
                                            stdin=agent_package().archive, timeout=timeout,
                                            label="installing the toolchain agent").json()
            if not answer["ready"]:
                raise TransportError(f"the toolchain agent could not be installed in {answer['dir']} on {self.target}",
                                     "check that the work folder on the target is writable")
            self._agent_dir = str(answer["dir"])
        return self._agent_dir

    def agent_script(self, script: str = BENCH_AGENT) -> str:
        """The path on the target of one of the package's scripts (the benchmark agent by default)."""
        return f"{self.agent_dir()}/{script}"

    def helper(self, operation: str, *args: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None,
               timeout: float | None = None, label: str | None = None) -> Any:
        """Run one helper operation with the target's Python and return its JSON answer."""
        result = self.transport.run([self.python, self.agent_script(HELPER), operation, *args], stdin=stdin,
                                    env=env, timeout=timeout or self.profile.command_timeout,
                                    label=label or f"{operation} (toolchain helper)")
        return result.json()

    def read_facts(self) -> TargetFacts:
        """Ask the target about itself (architecture, Python, glibc, CPU, disk, onnxruntime), writing nothing there.

        The profile's interpreters are tried in order; the first the target has runs everything after.
        """
        for python in self.profile.pythons:
            try:
                # from stdin: the preflight runs before anything is installed and leaves no trace
                answer = self.transport.run([python, "-", "facts", self.profile.workdir],
                                            stdin=stdin_program(HELPER), timeout=self.profile.command_timeout,
                                            label="preflight").json()
            except CommandFailedError as failure:
                if failure.exit_status in (126, 127):  # the shell could not find or run the interpreter
                    continue
                raise
            self.python = python
            self.facts = TargetFacts.from_helper(answer)
            return self.facts
        tried = ", ".join(self.profile.pythons)
        raise TargetIncompatibleError(f"{self.target} has no Python at {tried}",
                                      "install Python 3.5+ there (targets/bluebox2/README.md) or set python in "
                                      "the target profile (--python)")

    def require_facts(self) -> TargetFacts:
        return self.facts if self.facts is not None else self.read_facts()

    def remote_path(self, *parts: str) -> str:
        return "/".join([self.require_facts().workdir.rstrip("/"), *parts])

    @property
    def lock_lease_s(self) -> float:
        """How long the target keeps the lock without a heartbeat from this host (a stalled link's limit)."""
        return self.profile.keepalive * (self.profile.keepalive_count + 1)

    @contextmanager
    def locked(self, purpose: str, *, break_lock: bool = False) -> Iterator[None]:
        """Hold the target's lock (a flock held by a helper process) for the duration of the block.

        The lock is released when the block ends, when this process dies or the connection drops (the
        helper's stdin closes), and when the link stalls: the helper gives the lock up once no heartbeat
        arrived for `lock_lease_s`. `break_lock` stops a holder first (its pid on the target is in the file).
        """
        holder = json.dumps({"command": purpose, "host": socket.gethostname(), "user": getpass.getuser(),
                             "pid": os.getpid(),
                             "since": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        lock_path = self.remote_path(LOCK_NAME)
        process = self.transport.spawn([self.python, self.agent_script(HELPER), "lock", lock_path, holder,
                                        f"{self.lock_lease_s:g}", "break" if break_lock else "wait"], label="lock")
        answer = process.readline(self.profile.command_timeout)
        if answer is None or not answer.startswith("LOCKED"):
            status = process.stop(timeout=5.0)
            if answer and answer.startswith("BUSY") and status in (EXIT_BUSY, None):
                raise self._busy(answer.removeprefix("BUSY").strip(), lock_path, break_lock)
            raise TransportError(f"cannot take the lock {lock_path} on {self.target}: {answer or 'no answer'}",
                                 "check that the work folder on the target is writable")
        self.broken_lock = _holder_record(answer.removeprefix("LOCKED").strip()) or None
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(process, stop, self.profile.keepalive), daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            # bounded: a heartbeat stuck on a stalled link must not delay the error
            beat.join(timeout=self.profile.stall_timeout)
            process.stop()

    def _busy(self, holder_text: str, lock_path: str, tried_break: bool) -> LockHeldError:
        holder = _holder_record(holder_text)
        who = describe_holder(holder)
        age, lease = holder.get("heartbeat_age_s"), holder.get("lease_s")
        if tried_break:
            return LockHeldError(f"{self.target}: cannot break the lock {lock_path} of {who}: its holder "
                                 f"(pid {holder.get('target_pid', '?')} there) is not a toolchain lock process",
                                 f"stop that process on the target, or remove {lock_path} there by hand")
        if isinstance(age, (int, float)) and lease and age > lease:
            return LockHeldError(f"{self.target}: the lock {lock_path} is stale: {who} holds it, but its last "
                                 f"heartbeat was {age:g} s ago (lease {lease:g} s)",
                                 "its run is stuck or its link is gone; rerun with --break-lock to stop it and "
                                 "take the lock")
        return LockHeldError(f"{self.target} is busy: {who} holds {lock_path}",
                             "wait for it to finish and rerun; the lock ends with that run or its connection "
                             "(--break-lock stops it)")

    def require_space(self, needed: int, free: int, what: str) -> None:
        """Refuse before writing anything when `needed` bytes plus the profile's margin do not fit."""
        margin = self.profile.min_free_mb * _MB
        if needed + margin > free:
            raise TargetIncompatibleError(
                f"not enough disk on {self.target}: {what} needs {format_mb(needed)} (+{self.profile.min_free_mb} MB "
                f"margin), {format_mb(free)} free in {self.require_facts().free_path}",
                "free space on the target, deploy with --clean to drop old artifacts, or set another workdir")

    def upload(self, files: Sequence[LocalFile], directory: str, *, what: str,
               on_progress: UploadProgress | None = None) -> UploadResult:
        """Place `files` in `directory`: each to a temporary name, sha256 checked there, then renamed.

        Files already present with the right hash are not sent. On any failure or interrupt the temporary
        files are removed (after a dropped connection, through a new one), so no half-written file is left.
        """
        listing = self.helper("prepare", directory, "create", label=f"listing {directory}")
        present = listing["files"]
        result = UploadResult(directory=directory, sizes={item.name: item.size for item in files},
                              removed_partial=list(listing["removed_partial"]))
        todo = [item for item in files if present.get(item.name, {}).get("sha256") != item.sha256]
        result.unchanged = [item.name for item in files if item not in todo]
        if not todo:
            return result
        self.require_space(sum(item.size for item in todo), listing["free_bytes"], what)
        temps: dict[str, str] = {}
        try:
            for item in todo:
                temps[item.name] = f"{UPLOAD_PREFIX}{secrets.token_hex(4)}-{item.name}"
                sent = self.transport.put(item.path, f"{directory}/{temps[item.name]}",
                                          on_bytes=(lambda done, name=item.name, total=item.size:
                                                    on_progress(name, done, total)) if on_progress else None)
                result.bytes_sent += sent
            plan = [{"temp": temps[item.name], "final": item.name, "sha256": item.sha256} for item in todo]
            committed = self.helper("commit", directory, stdin=json.dumps(plan).encode(),
                                    label=f"verifying the upload in {directory}")
        except (ConnectionDroppedError, KeyboardInterrupt):
            # Ctrl-C too: the connection still works, so the target keeps no half-written file
            self._remove_partial(directory, temps)
            raise
        except TransportError as error:
            self._remove_partial(directory, temps)
            free = self._free_bytes(directory)
            raise DeployError(f"{error.message}" + (f" ({format_mb(free)} free there now)" if free is not None else ""),
                              error.hint) from None
        if committed["mismatched"]:
            bad = committed["mismatched"][0]
            raise DeployError(f"{bad['name']} arrived corrupted on {self.target} (sha256 {bad['actual'][:12]}..., "
                              f"expected {bad['expected'][:12]}...); it was not put in place",
                              "rerun the deploy; if it happens again, check the target's disk and memory")
        result.sent = [item.name for item in todo]
        return result

    def _remove_partial(self, directory: str, temps: Mapping[str, str]) -> None:
        if not temps:
            return
        try:
            self.helper("remove", directory, *temps.values(), timeout=min(self.profile.command_timeout, 60.0),
                        label="removing partial uploads")
        except TransportError:
            # the next deploy's `prepare` removes them under the lock
            pass

    def _free_bytes(self, directory: str) -> int | None:
        try:
            return int(self.helper("free", directory, label="checking free space")["free_bytes"])
        except TransportError:
            return None
