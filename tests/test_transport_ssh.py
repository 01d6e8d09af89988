"""The SSH transport against a real OpenSSH server on 127.0.0.1: commands, files, keys and faults.

Each fault ends in one typed error with a one-line message and hint, and leaves nothing behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.sshd import LOOPBACK, FlakyProxy, LoopbackSSHD, free_port, running_sshd
from toolchain.errors import (AuthenticationFailedError, CommandFailedError, CommandTimedOutError,
                              ConnectionDroppedError, HostKeyMismatchError, HostKeyUnknownError,
                              HostUnreachableError, TransportError)
from toolchain.transport import LocalTransport, SSHSettings, SSHTransport, Transport

pytestmark = pytest.mark.sshd

# arguments a careless `" ".join(argv)` would let the shell interpret
NASTY = ["plain", "two words", "$(touch pwned)", "`touch pwned`", "a;b|c&d", "'single'", '"double"', "back\\slash",
         "*", "~", "new\nline", "", "-n", "ümlaut"]
ECHO_ARGV = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]


def settings(sshd: LoopbackSSHD, folder: Path, **overrides: object) -> SSHSettings:
    values: dict = dict(host=LOOPBACK, port=sshd.port, user="root", identity_file=sshd.client_key,
                        use_agent=False, connect_timeout=5)
    values.update(overrides)
    if "known_hosts" not in values:
        values["known_hosts"] = sshd.known_hosts(folder)
    return SSHSettings(**values)


@pytest.fixture
def ssh(loopback_sshd: LoopbackSSHD, tmp_path: Path) -> SSHTransport:
    transport = SSHTransport(settings(loopback_sshd, tmp_path))
    yield transport
    transport.close()


@pytest.mark.parametrize("kind", ["ssh", "local"])
def test_arguments_reach_the_target_verbatim_with_no_shell_interpretation(kind: str, ssh: SSHTransport,
                                                                           tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    transport: Transport = ssh if kind == "ssh" else LocalTransport()
    result = transport.run([*ECHO_ARGV, *NASTY], env={"TOOLCHAIN_TEST": "x y $(z)"}, timeout=30)
    assert json.loads(result.stdout) == NASTY
    assert not (tmp_path / "pwned").exists() and not Path("/root/pwned").exists()


def test_environment_values_are_passed_quoted(ssh: SSHTransport) -> None:
    result = ssh.run([sys.executable, "-c", "import os; print(os.environ['TC_VALUE'])"],
                     env={"TC_VALUE": "a b; $(echo no) 'q'"})
    assert result.stdout.strip() == "a b; $(echo no) 'q'"


def test_failed_command_raises_with_exit_status_and_last_stderr_line(ssh: SSHTransport) -> None:
    with pytest.raises(CommandFailedError) as caught:
        ssh.run([sys.executable, "-c", "import sys; sys.stderr.write('first\\nthe reason\\n'); sys.exit(3)"],
                label="the step")
    assert caught.value.exit_status == 3
    assert "the reason" in caught.value.message and "the step" in caught.value.message
    assert "first" in caught.value.stderr
    assert ssh.run(["false"], check=False).exit_status == 1


def test_stderr_lines_arrive_while_the_command_runs(ssh: SSHTransport, tmp_path: Path) -> None:
    # the command waits for an answer to its first line: only a streamed line can give it one
    answer = tmp_path / "answer"
    code = ("import os, sys, time\nprint('first', file=sys.stderr, flush=True)\n"
            "for _ in range(200):\n    if os.path.exists(sys.argv[1]):\n        print('answered')\n        break\n"
            "    time.sleep(0.05)\nelse:\n    print('no answer')")
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        answer.touch()

    result = ssh.run([sys.executable, "-c", code, str(answer)], on_stderr_line=on_line)
    assert seen == ["first"] and result.stdout.strip() == "answered"


def test_command_timeout_stops_the_remote_process(ssh: SSHTransport, tmp_path: Path) -> None:
    marker = f"toolchain-timeout-{tmp_path.name}"
    with pytest.raises(CommandTimedOutError) as caught:
        ssh.run(["sh", "-c", f"sleep 60; echo {marker}"], timeout=1, label="the slow step")
    assert "1 s timeout" in caught.value.message and caught.value.hint
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", f"sleep 60; echo {marker}"], capture_output=True, text=True)
    assert left.stdout.strip() == ""


def test_put_and_get_round_trip_a_file(ssh: SSHTransport, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 4000)
    seen: list[int] = []
    assert ssh.put(source, str(tmp_path / "remote copy.bin"), on_bytes=seen.append) == source.stat().st_size
    assert seen and seen[-1] == source.stat().st_size
    assert ssh.get(str(tmp_path / "remote copy.bin"), tmp_path / "back.bin") == source.stat().st_size
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()


def test_unknown_host_key_is_refused_with_its_fingerprint(loopback_sshd: LoopbackSSHD, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    transport = SSHTransport(settings(loopback_sshd, tmp_path, known_hosts=empty))
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(loopback_sshd.directory / "host_key.pub")],
                                 capture_output=True, text=True, check=True).stdout.split()[1]
    with pytest.raises(HostKeyUnknownError) as caught:
        transport.run(["true"])
    assert fingerprint in caught.value.message
    assert "--accept-new-host-key" in (caught.value.hint or "")
    assert not empty.exists()


def test_accept_new_host_key_records_it_and_connects(loopback_sshd: LoopbackSSHD, tmp_path: Path) -> None:
    known_hosts = tmp_path / "ssh" / "known_hosts"
    with SSHTransport(settings(loopback_sshd, tmp_path, known_hosts=known_hosts, accept_new_host_key=True)) as first:
        assert first.run(["true"]).exit_status == 0
        assert first.accepted_host_keys
    assert known_hosts.read_text() == f"[{LOOPBACK}]:{loopback_sshd.port} {loopback_sshd.host_key_line}\n"
    with SSHTransport(settings(loopback_sshd, tmp_path, known_hosts=known_hosts)) as strict:
        assert strict.run(["true"]).exit_status == 0


def test_changed_host_key_is_refused_even_with_accept_new(loopback_sshd: LoopbackSSHD, tmp_path: Path) -> None:
    forged = tmp_path / "known_hosts"
    other = loopback_sshd.other_key.with_suffix(".pub").read_text().split()
    forged.write_text(f"[{LOOPBACK}]:{loopback_sshd.port} {other[0]} {other[1]}\n")
    before = forged.read_text()
    transport = SSHTransport(settings(loopback_sshd, tmp_path, known_hosts=forged, accept_new_host_key=True))
    with pytest.raises(HostKeyMismatchError) as caught:
        transport.run(["true"])
    assert "CHANGED" in caught.value.message and "ssh-keygen -f" in (caught.value.hint or "")
    assert forged.read_text() == before


def test_wrong_key_fails_authentication(loopback_sshd: LoopbackSSHD, tmp_path: Path) -> None:
    transport = SSHTransport(settings(loopback_sshd, tmp_path, identity_file=loopback_sshd.other_key))
    with pytest.raises(AuthenticationFailedError) as caught:
        transport.run(["true"])
    assert "refused the login" in caught.value.message and "authorized_keys" in (caught.value.hint or "")


def test_closed_port_is_unreachable_at_once(loopback_sshd: LoopbackSSHD, tmp_path: Path) -> None:
    transport = SSHTransport(settings(loopback_sshd, tmp_path, port=free_port()))
    with pytest.raises(HostUnreachableError) as caught:
        transport.run(["true"])
    assert "connection refused" in caught.value.message


def test_transient_handshake_reset_is_retried(loopback_sshd: LoopbackSSHD, tmp_path: Path) -> None:
    proxy = FlakyProxy(loopback_sshd.port, reset_first=True)
    try:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[{LOOPBACK}]:{proxy.port} {loopback_sshd.host_key_line}\n")
        with SSHTransport(settings(loopback_sshd, tmp_path, port=proxy.port, known_hosts=known_hosts,
                                   retry_backoff_s=0.1)) as transport:
            assert transport.run(["true"]).exit_status == 0
        assert proxy.connections == 2
    finally:
        proxy.close()


def test_dropped_connection_mid_upload_is_reported_as_dropped(loopback_sshd: LoopbackSSHD, tmp_path: Path) -> None:
    proxy = FlakyProxy(loopback_sshd.port, drop_after=400_000)
    try:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[{LOOPBACK}]:{proxy.port} {loopback_sshd.host_key_line}\n")
        source = tmp_path / "big.bin"
        source.write_bytes(b"\x5a" * 3_000_000)
        transport = SSHTransport(settings(loopback_sshd, tmp_path, port=proxy.port, known_hosts=known_hosts))
        with pytest.raises(ConnectionDroppedError) as caught:
            transport.put(source, str(tmp_path / "copy.bin"))
        assert proxy.dropped.is_set()
        assert "dropped" in caught.value.message
        transport.close()
    finally:
        proxy.close()


def test_upload_into_a_full_disk_fails_and_leaves_no_partial_file(ssh: SSHTransport, small_tmpfs: Path,
                                                                   tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(b"\x00" * (3 << 20))
    with pytest.raises(TransportError) as caught:
        ssh.put(source, str(small_tmpfs / "big.bin"))
    assert not isinstance(caught.value, ConnectionDroppedError)
    assert list(small_tmpfs.iterdir()) == []


def test_an_sftp_subsystem_that_never_answers_falls_back_to_the_exec_stream(tmp_path: Path) -> None:
    """paramiko's open_sftp() waits for the version reply without a timeout: a silent subsystem hung deploy."""
    (tmp_path / "server").mkdir()
    with running_sshd(tmp_path / "server", sftp="/bin/sleep 600") as server:
        source = tmp_path / "payload.bin"
        source.write_bytes(bytes(range(256)) * 64)
        started = time.monotonic()
        with SSHTransport(settings(server, tmp_path, stall_timeout=3)) as transport:
            assert transport.put(source, str(tmp_path / "copy.bin")) == source.stat().st_size
            assert transport.sftp_missing
        assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
        assert time.monotonic() - started < 60
