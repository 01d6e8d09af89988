"""Deadlines and the target lock under faults: a link that stalls (a proxy that passes some bytes, then
nothing, keeping both ends open), a peer that stops answering, a stale lock and --break-lock.

Each fault ends in one clear error within its limit; nothing half-written stays, and the lock is released
(or, when its holder is stuck, reported as stale and breakable).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.fixtures.deploy import DeployArtifacts, artifact_copy
from tests.fixtures.servers import StallingProxy
from tests.fixtures.sshd import LOOPBACK, LoopbackSSHD
from toolchain.errors import ConnectionDroppedError, LockHeldError
from toolchain.remote.agent_package import UPLOAD_PREFIX
from toolchain.remote.deploy import RECEIPT, deploy
from toolchain.remote.session import LOCK_NAME, TargetSession
from toolchain.remote.target import TargetProfile, open_transport
from toolchain.transport import SSHSettings, SSHTransport

pytestmark = pytest.mark.sshd

TOOLCHAIN = str(Path(sys.executable).with_name("toolchain"))
# short limits so that each fault ends in seconds: lease = keepalive * (count + 1) = 3 s
FAST = dict(keepalive=1.0, keepalive_count=2, stall_timeout=2.0)


@pytest.fixture
def artifact(deploy_artifacts: DeployArtifacts, tmp_path: Path) -> Path:
    return artifact_copy(deploy_artifacts.loadable_by_1_16, tmp_path / "artifacts")


@pytest.fixture
def stalling(loopback_sshd: LoopbackSSHD, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StallingProxy]:
    proxy = StallingProxy(loopback_sshd.port, stall_after=getattr(request, "param", 150_000))
    (tmp_path / "proxied_known_hosts").write_text(f"[{LOOPBACK}]:{proxy.port} {loopback_sshd.host_key_line}\n")
    yield proxy
    proxy.close()


def wait_until_lock_is_free(profile: TargetProfile, within: float) -> float:
    """Seconds until the target's lock could be taken (fails after `within`)."""
    started = time.monotonic()
    with open_transport(profile) as transport:
        session = TargetSession(transport, profile)
        while True:
            try:
                with session.locked("probe"):
                    return time.monotonic() - started
            except LockHeldError:
                assert time.monotonic() - started < within, f"the lock was still held after {within} s"
                time.sleep(0.3)


@pytest.mark.parametrize("stalling", [300_000], indirect=True)
def test_a_stalled_upload_fails_within_its_deadline(loopback_sshd: LoopbackSSHD, stalling: StallingProxy,
                                                    tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(3_000_000))
    settings = SSHSettings(host=LOOPBACK, port=stalling.port, user="root", identity_file=loopback_sshd.client_key,
                           known_hosts=tmp_path / "proxied_known_hosts", use_agent=False, connect_timeout=5,
                           keepalive_s=1, keepalive_count=2, stall_timeout=2)
    started = time.monotonic()
    with SSHTransport(settings) as transport:
        with pytest.raises(ConnectionDroppedError) as caught:
            transport.put(source, str(tmp_path / "copy.bin"))
    elapsed = time.monotonic() - started
    assert stalling.stalled.is_set() and elapsed < 8, f"took {elapsed:.1f} s"
    assert "stalled" in caught.value.message or "stopped answering" in caught.value.message
    assert f"{LOOPBACK}:{stalling.port}" in caught.value.message and caught.value.hint


@pytest.mark.parametrize("stalling", [300_000], indirect=True)
def test_a_command_on_a_stalled_link_fails_when_the_keepalives_go_unanswered(loopback_sshd: LoopbackSSHD,
                                                                            stalling: StallingProxy,
                                                                            tmp_path: Path) -> None:
    settings = SSHSettings(host=LOOPBACK, port=stalling.port, user="root", identity_file=loopback_sshd.client_key,
                           known_hosts=tmp_path / "proxied_known_hosts", use_agent=False, connect_timeout=5,
                           keepalive_s=1, keepalive_count=2, stall_timeout=2)
    with SSHTransport(settings) as transport:
        transport.run(["true"])
        started = time.monotonic()
        with pytest.raises(ConnectionDroppedError) as caught:
            # no timeout of its own: only the keep-alives can end it; its stdin is what stalls the link
            transport.run([sys.executable, "-c", "import sys, time; sys.stdin.buffer.read(); time.sleep(60)"],
                          stdin=os.urandom(400_000), label="the long step")
        elapsed = time.monotonic() - started
    assert "stopped answering during the long step" in caught.value.message and "keep-alives" in caught.value.message
    assert elapsed < 6, f"took {elapsed:.1f} s"


def test_a_stalled_deploy_fails_in_seconds_releases_the_lock_and_leaves_nothing(loopback_sshd: LoopbackSSHD,
                                                                                stalling: StallingProxy,
                                                                                tmp_path: Path,
                                                                                artifact: Path) -> None:
    profile = loopback_sshd.profile(tmp_path, port=stalling.port, known_hosts=tmp_path / "proxied_known_hosts",
                                    command_timeout=15, **FAST)
    started = time.monotonic()
    with pytest.raises(ConnectionDroppedError) as caught:
        deploy(profile, artifact)
    assert stalling.stalled.is_set() and time.monotonic() - started < 10
    assert caught.value.hint and ("stalled" in caught.value.message or "stopped answering" in caught.value.message)
    direct = loopback_sshd.profile(tmp_path, **FAST)
    assert wait_until_lock_is_free(direct, within=8) < 8  # the lease (3 s) ran out without heartbeats
    folder = Path(profile.workdir) / artifact.name
    left = {path.name for path in folder.iterdir()} if folder.is_dir() else set()
    assert RECEIPT not in left and not any(name.startswith(UPLOAD_PREFIX) for name in left)
    assert deploy(direct, artifact).bytes_sent > 0


@pytest.fixture
def stuck_holder(loopback_sshd: LoopbackSSHD, tmp_path: Path) -> Iterator[dict]:
    """A lock on the target whose holder is frozen (SIGSTOP): alive, holding the flock, sending no heartbeat."""
    profile = loopback_sshd.profile(tmp_path, keepalive=0.5, keepalive_count=1)
    with open_transport(profile) as transport:
        session = TargetSession(transport, profile)
        with session.locked("bench of a run that got stuck"):
            record = json.loads((Path(profile.workdir) / LOCK_NAME).read_text())
            os.kill(record["target_pid"], signal.SIGSTOP)
            time.sleep(2.0)  # its heartbeat ages past its 1 s lease
            try:
                yield record
            finally:
                try:
                    os.kill(record["target_pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_a_stale_lock_is_reported_with_its_holder_and_broken_on_request(loopback_sshd: LoopbackSSHD, tmp_path: Path,
                                                                        artifact: Path, stuck_holder: dict) -> None:
    profile = loopback_sshd.profile(tmp_path)
    with pytest.raises(LockHeldError) as caught:
        deploy(profile, artifact)
    message = caught.value.message
    assert "stale" in message and "bench of a run that got stuck" in message and f"pid {os.getpid()}" in message
    assert "--break-lock" in (caught.value.hint or "")
    said: list[str] = []
    report = deploy(profile, artifact, break_lock=True, on_message=said.append)
    assert report.bytes_sent > 0 and any("broke the lock of a bench of a run that got stuck" in line for line in said)
    with pytest.raises(ProcessLookupError):
        os.kill(stuck_holder["target_pid"], 0)
        raise AssertionError("the stuck holder still runs")  # pragma: no cover
    assert deploy(profile, artifact).bytes_sent == 0  # the broken lock left nothing that blocks the next run


def test_break_lock_never_stops_a_process_that_is_not_a_lock_holder(loopback_sshd: LoopbackSSHD, tmp_path: Path,
                                                                    artifact: Path) -> None:
    profile = loopback_sshd.profile(tmp_path)
    workdir = Path(profile.workdir)
    workdir.mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "60"])
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\nf = open(sys.argv[1], 'w')\n"
                               "f.write(sys.argv[2]); f.flush(); fcntl.flock(f, fcntl.LOCK_EX); time.sleep(60)",
                               str(workdir / LOCK_NAME),
                               json.dumps({"command": "deploy", "target_pid": bystander.pid})])
    try:
        time.sleep(1.0)
        with pytest.raises(LockHeldError) as caught:
            deploy(profile, artifact, break_lock=True)
        assert "cannot break" in caught.value.message and bystander.poll() is None
    finally:
        for process in (holder, bystander):
            process.kill()
            process.wait()


def test_cli_names_the_stale_lock_in_two_lines_and_breaks_it_with_the_flag(loopback_sshd: LoopbackSSHD,
                                                                           tmp_path: Path, artifact: Path,
                                                                           stuck_holder: dict) -> None:
    target = loopback_sshd.profile_file(tmp_path, "lab", loopback_sshd.known_hosts(tmp_path), platform.machine())
    command = [TOOLCHAIN, "deploy", "--target", str(target), "--artifact", str(artifact), "--json"]
    refused = subprocess.run(command, capture_output=True, text=True)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and refused.stdout == "" and "Traceback" not in refused.stderr
    assert lines[-2].startswith("error: ") and "stale" in lines[-2]
    assert lines[-1].startswith("hint: ") and "--break-lock" in lines[-1]
    broken = subprocess.run(command + ["--break-lock"], capture_output=True, text=True)
    assert broken.returncode == 0, broken.stderr
    assert json.loads(broken.stdout)["bytes_sent"] > 0 and "broke the lock" in broken.stderr
