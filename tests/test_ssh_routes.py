"""ProxyJump and ProxyCommand against real servers in network namespaces the suite makes:

    this machine -- 10.201.1.0/24 -- tc-jump-a (OpenSSH) -- 10.201.2.0/24 -- tc-ssha-t (dropbear, no SFTP)

The host has no route to the target (an `unreachable` route for its subnet), so every connection that
reaches it went through the jump host; each hop's host key is checked like the target's.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.fixtures.deploy import DeployArtifacts, artifact_copy
from tests.fixtures.servers import (JUMP_NETNS, JumpNetwork, RunningServer, jump_network, running_server,
                                    server_prerequisites)
from toolchain.errors import HostKeyMismatchError, HostKeyUnknownError, HostUnreachableError
from toolchain.transport import SSHSettings, SSHTransport

pytestmark = pytest.mark.sshd

RELAY = Path(__file__).resolve().parent / "fixtures" / "relay.py"
TOOLCHAIN = str(Path(sys.executable).with_name("toolchain"))
SHOW_CONNECTION = ["sh", "-c", "echo $SSH_CONNECTION"]


class Route:
    """The two servers and the files that reach them."""

    def __init__(self, network: JumpNetwork, jump: RunningServer, target: RunningServer, folder: Path) -> None:
        self.network, self.jump, self.target = network, jump, target
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text(f"{network.jump_address} {jump.host_key_line}\n"
                                    f"{network.jump_inner_address} {jump.host_key_line}\n"
                                    f"{network.target_address} {target.host_key_line}\n")

    def settings(self, host: str, **values: object) -> SSHSettings:
        defaults: dict = dict(host=host, user="root", identity_file=self.target.client_key,
                              known_hosts=self.known_hosts, use_agent=False, connect_timeout=5)
        return SSHSettings(**{**defaults, **values})

    def to_target(self, *jumps: str, **values: object) -> SSHTransport:
        hop_values = {key: value for key, value in values.items() if key in ("known_hosts", "accept_new_host_key")}
        return SSHTransport(self.settings(self.network.target_address, jumps=tuple(
            self.settings(host, **hop_values) for host in jumps), **values))


@pytest.fixture(scope="module")
def route(tmp_path_factory: pytest.TempPathFactory, client_key: Path) -> Iterator[Route]:
    server_prerequisites("dropbear-nosftp")
    folder = tmp_path_factory.mktemp("routes")
    with jump_network() as network:
        with running_server("openssh", folder / "jump", client_key, host="0.0.0.0", port=22,
                            netns=JUMP_NETNS) as jump:
            with running_server("dropbear-nosftp", folder / "target", client_key, host=network.target_address,
                                port=22, netns="tc-ssha-t") as target:
                yield Route(network, jump, target, folder)


def test_the_target_is_reachable_only_through_the_jump_host(route: Route) -> None:
    with pytest.raises(HostUnreachableError) as caught:
        SSHTransport(route.settings(route.network.target_address)).run(["true"])
    assert route.network.target_address in caught.value.message
    with route.to_target(route.network.jump_address) as transport:
        seen = transport.run(SHOW_CONNECTION).stdout.split()
        assert transport.settings.route == f" via jump host root@{route.network.jump_address}:22"
    assert seen[0] == route.network.jump_inner_address and seen[2] == route.network.target_address


def test_a_chain_of_jump_hosts_goes_hop_by_hop(route: Route) -> None:
    with route.to_target(route.network.jump_address, route.network.jump_inner_address) as transport:
        seen = transport.run(SHOW_CONNECTION).stdout.split()
    assert seen[0] == route.network.jump_inner_address


def test_an_unknown_jump_host_key_is_refused_and_accept_new_records_every_hop(route: Route, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    with pytest.raises(HostKeyUnknownError) as caught:
        route.to_target(route.network.jump_address, known_hosts=empty).run(["true"])
    assert route.network.jump_address in caught.value.message and "SHA256:" in caught.value.message
    assert not empty.exists()
    with route.to_target(route.network.jump_address, known_hosts=empty, accept_new_host_key=True) as transport:
        transport.run(["true"])
        assert len(transport.accepted_host_keys) == 2
    assert sorted(line.split()[0] for line in empty.read_text().splitlines()) == sorted(
        [route.network.jump_address, route.network.target_address])


def test_a_changed_jump_host_key_is_refused_even_with_accept_new(route: Route, tmp_path: Path) -> None:
    forged = tmp_path / "known_hosts"
    forged.write_text(route.known_hosts.read_text().replace(
        f"{route.network.jump_address} {route.jump.host_key_line}",
        f"{route.network.jump_address} {route.target.host_key_line}"))
    with pytest.raises(HostKeyMismatchError) as caught:
        route.to_target(route.network.jump_address, known_hosts=forged, accept_new_host_key=True).run(["true"])
    assert route.network.jump_address in caught.value.message and "CHANGED" in caught.value.message


def test_a_jump_host_that_cannot_reach_the_target_says_so(route: Route) -> None:
    transport = SSHTransport(route.settings("10.201.3.9", jumps=(route.settings(route.network.jump_address),),
                                            connect_timeout=2))
    with pytest.raises(HostUnreachableError) as caught:
        transport.run(["true"])
    assert f"jump host root@{route.network.jump_address}:22 cannot reach 10.201.3.9:22" in caught.value.message


def test_proxy_command_reaches_the_target_through_a_relay_in_the_jump_namespace(route: Route) -> None:
    command = f"ip netns exec {JUMP_NETNS} {sys.executable} {RELAY} {route.network.target_address} 22"
    with SSHTransport(route.settings(route.network.target_address, proxy_command=command)) as transport:
        seen = transport.run(SHOW_CONNECTION).stdout.split()
    assert seen[0] == route.network.jump_inner_address


def test_a_failing_proxy_command_is_one_error_naming_it(route: Route) -> None:
    transport = SSHTransport(route.settings(route.network.target_address, proxy_command="false",
                                            connect_attempts=1))
    with pytest.raises(HostUnreachableError) as caught:
        transport.run(["true"])
    assert "ProxyCommand" in caught.value.message + (caught.value.hint or "")


def test_cli_deploys_through_the_proxy_jump_of_an_ssh_config_alias(route: Route, tmp_path: Path,
                                                                   deploy_artifacts: DeployArtifacts) -> None:
    artifact = artifact_copy(deploy_artifacts.loadable_by_1_16, tmp_path / "artifacts")
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Host board\n  HostName {route.network.target_address}\n  ProxyJump bastion\n"
                          f"Host bastion\n  HostName {route.network.jump_address}\n"
                          f"Host *\n  User root\n  IdentityFile {route.target.client_key}\n"
                          f"  UserKnownHostsFile {route.known_hosts}\n")
    target = tmp_path / "target.toml"
    # stall_timeout: the route is under test here, not the disk of a loaded test machine
    target.write_text(f'name = "behind-bastion"\n[connection]\nhost = "board"\nssh_config = "{ssh_config}"\n'
                      f'use_agent = false\nstall_timeout = 120\n[target]\narch = "{platform.machine()}"\n'
                      f'python = "{sys.executable}"\nworkdir = "{tmp_path / "work"}"\nmin_free_mb = 0\n')
    checked = subprocess.run([TOOLCHAIN, "target", "check", "--target", str(target), "--json"],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    deployed = subprocess.run([TOOLCHAIN, "deploy", "--target", str(target), "--artifact", str(artifact), "--json"],
                              capture_output=True, text=True)
    assert deployed.returncode == 0, deployed.stderr
    assert json.loads(deployed.stdout)["bytes_sent"] > 0
    direct = subprocess.run([TOOLCHAIN, "target", "check", "--target", str(target), "--jump", "none"],
                            capture_output=True, text=True)
    lines = direct.stderr.strip().splitlines()
    assert direct.returncode == 1 and lines[0].startswith("error: ") and lines[1].startswith("hint: ")
    assert route.network.target_address in lines[0] and "Traceback" not in direct.stderr
