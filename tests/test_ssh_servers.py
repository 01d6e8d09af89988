"""Any POSIX SSH server is a target: OpenSSH and dropbear, with and without SFTP, a BusyBox userland, and a
target whose only sha256sum is BusyBox's applet.

Files go over SFTP where the server has it and over an exec-channel stream (sha256 checked, renamed)
where it does not; a whole deploy, an unchanged redeploy and a bench (its result fetched back) work on each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.fixtures.deploy import DeployArtifacts, artifact_copy
from tests.fixtures.servers import RunningServer, running_server, server_prerequisites
from tests.fixtures.sshd import LoopbackSSHD
from toolchain.bench.results import validate_result
from toolchain.bench.settings import BenchSettings
from toolchain.bench.system import bench_remote
from toolchain.errors import ConnectionDroppedError, TransportError
from toolchain.remote.deploy import deploy
from toolchain.transport import SSHSettings, SSHTransport

pytestmark = pytest.mark.sshd

KINDS = ["openssh", "openssh-nosftp", "dropbear", "dropbear-nosftp", "dropbear-busybox-nosftp",
         "openssh-nosha256sum-nosftp"]


@pytest.fixture(scope="module", params=KINDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           client_key: Path) -> Iterator[RunningServer]:
    server_prerequisites(request.param)
    with running_server(request.param, tmp_path_factory.mktemp(request.param), client_key) as running:
        yield running


def transport_for(server: RunningServer, folder: Path, **values: object) -> SSHTransport:
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(server.known_hosts_line() + "\n")
    return SSHTransport(SSHSettings(host=server.host, port=server.port, user="root", identity_file=server.client_key,
                                    known_hosts=known_hosts, use_agent=False, connect_timeout=5, **values))


def test_files_round_trip_over_sftp_or_the_exec_stream(server: RunningServer, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 5000)
    seen: list[int] = []
    with transport_for(server, tmp_path) as transport:
        assert transport.put(source, str(tmp_path / "remote copy.bin"), on_bytes=seen.append) == 1_280_000
        assert transport.sftp_missing == server.kind.endswith("-nosftp")
        assert transport.get(str(tmp_path / "remote copy.bin"), tmp_path / "back.bin") == 1_280_000
    assert seen[-1] == 1_280_000 and (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    assert (tmp_path / "remote copy.bin").read_bytes() == source.read_bytes()


def test_the_target_shell_is_the_one_asked_for(server: RunningServer, tmp_path: Path) -> None:
    with transport_for(server, tmp_path) as transport:
        shell = transport.run(["sh", "-c", "readlink -f /proc/$$/exe; timeout --help 2>&1 | head -1"]).stdout
    assert ("busybox" in shell.lower()) == ("busybox" in server.kind)


def test_every_server_answers_the_keepalives_that_detect_a_dead_peer(server: RunningServer, tmp_path: Path) -> None:
    # a keep-alive every 0.3 s, dead after 0.6 s without an answer: the connection lives through six of them
    with transport_for(server, tmp_path, keepalive_s=0.3, keepalive_count=2) as transport:
        assert transport.run(["sleep", "2"]).exit_status == 0
        assert transport.run(["true"]).exit_status == 0


def test_a_write_into_a_full_disk_fails_and_leaves_no_partial_file(server: RunningServer, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 1_000_000)
    remote = f"{server.tiny_disk}/copy.bin"
    with transport_for(server, tmp_path) as transport:
        with pytest.raises(TransportError) as caught:
            transport.put(source, remote)
        assert not isinstance(caught.value, ConnectionDroppedError)
        assert "copy.bin" in caught.value.message and "free space" in (caught.value.hint or "")
        assert transport.run(["ls", "-A", str(server.tiny_disk)]).stdout == ""
        with pytest.raises(TransportError, match="missing"):
            transport.put(source, f"{server.tiny_disk}/missing/copy.bin")


def test_deploy_an_unchanged_redeploy_and_a_bench_work_on_every_server(server: RunningServer, tmp_path: Path,
                                                               loopback_sshd: LoopbackSSHD,
                                                               deploy_artifacts: DeployArtifacts) -> None:
    artifact = artifact_copy(deploy_artifacts.loadable_by_1_16, tmp_path / "artifacts")
    known_hosts = tmp_path / "server_known_hosts"
    known_hosts.write_text(server.known_hosts_line() + "\n")
    profile = loopback_sshd.profile(tmp_path, port=server.port, identity_file=server.client_key,
                                    known_hosts=known_hosts, python=sys.executable)
    first = deploy(profile, artifact)
    assert first.bytes_sent > 0 and len(first.upload.sent) == 5
    again = deploy(profile, artifact)
    assert again.bytes_sent == 0 and len(again.upload.unchanged) == 5
    measured = bench_remote(profile, artifact, BenchSettings(threads=(1,), warmup=1, runs=3))
    assert validate_result(json.loads(measured.path.read_text()))["remote"]["address"] == profile.address
