"""`toolchain fleet deploy|bench` over four real OpenSSH servers on 127.0.0.1 (one slow, one whose benchmark agent
is killed mid-run), and the inventory reader those commands use.

The CLI runs as a subprocess; the servers sit behind proxies of this process that count the SSH sessions open
at once across the fleet, which is what --forks must bound.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.fixtures.deploy import DeployArtifacts, artifact_copy
from tests.fixtures.fleet import LoopbackFleet, loopback_fleet
from tests.fixtures.sshd import sshd_prerequisites
from tests.test_ssh_routes import Route, route  # noqa: F401 - a fixture: the jump host and the target behind it
from toolchain.errors import InventoryError, UsageError
from toolchain.fleet.inventory import read_inventory, select_hosts
from toolchain.fleet.run import FleetOptions, host_profile

TOOLCHAIN = str(Path(sys.executable).with_name("toolchain"))
BENCH_QUICK = ["--threads", "1", "--warmup", "1", "--runs", "3", "--min-time", "2"]


# --- the inventory ----------------------------------------------------------------------------


def test_ini_inventory_groups_children_vars_and_ranges(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("loose ansible_host=127.0.0.1\n\n[boards]\nbb[01:03] ansible_port=2201\n"
                    "pi ansible_host=127.0.0.2 ansible_user='pi user' toolchain_target=bluebox2\n\n"
                    "[boards:vars]\nansible_user=root\n\n[slow]\nbb03\n\n[lab:children]\nboards\n\n[lab:vars]\n"
                    "ansible_user=lab\nansible_port=22\n")
    hosts = {host.name: host for host in read_inventory(path)}
    assert list(hosts) == ["loose", "bb01", "bb02", "bb03", "pi"]
    # host vars beat the deeper group (boards, under lab), which beats the shallower one
    assert hosts["bb01"].vars == {"ansible_port": 2201, "ansible_user": "root"}
    assert hosts["pi"].vars["ansible_user"] == "pi user" and hosts["pi"].vars["ansible_port"] == 22
    assert set(hosts["bb03"].groups) == {"all", "boards", "lab", "slow"}
    assert hosts["loose"].groups == ("all", "ungrouped")
    assert [host.name for host in select_hosts(list(hosts.values()), "lab:!slow")] == ["bb01", "bb02", "pi"]
    assert [host.name for host in select_hosts(list(hosts.values()), "bb*:&slow")] == ["bb03"]
    with pytest.raises(UsageError, match="matches no host") as caught:
        select_hosts(list(hosts.values()), "bords")
    assert caught.value.hint == "did you mean boards?"


def test_yaml_inventory_and_the_profile_each_host_gets(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  vars:\n    ansible_user: root\n  children:\n    boards:\n      vars:\n"
                    "        toolchain_workdir: /srv/tc\n        ansible_ssh_common_args: -o ProxyJump=gw:2222\n"
                    "      hosts:\n        b[1:2]:\n          ansible_host: 127.0.0.9\n          ansible_port: 2022\n"
                    "      children:\n        fast:\n          hosts:\n            b1:\n              ansible_user: me\n")
    hosts = {host.name: host for host in read_inventory(path)}
    assert set(hosts["b1"].groups) == {"all", "boards", "fast"} and hosts["b1"].vars["ansible_user"] == "me"
    options = FleetOptions(known_hosts=tmp_path / "known_hosts")
    profile = host_profile(hosts["b2"], options)
    assert (profile.name, profile.host, profile.port, profile.user, profile.workdir) == \
        ("linux", "127.0.0.9", 2022, "root", "/srv/tc")
    assert profile.proxy_jump == "gw:2222" and profile.known_hosts == tmp_path / "known_hosts"


@pytest.mark.parametrize("text, message", [
    ("[boards\nx\n", "not a section header"),
    ("[a:children]\nnope\n", "names child group 'nope'"),
    ("[a]\nhost port\n", "is not key=value"),
    ("all:\n  hosts: [a, b]\n", "must be a mapping"),
    ("[a]\nweb[3:x]\n", "bad range"),
])
def test_a_malformed_inventory_is_one_error_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "inventory"
    path.write_text(text)
    with pytest.raises(InventoryError, match=message) as caught:
        read_inventory(path)
    assert str(path) in caught.value.message and caught.value.hint


# --- the fleet over real sshd -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackFleet]:
    sshd_prerequisites()
    with loopback_fleet(tmp_path_factory.mktemp("fleet")) as running:
        yield running


def toolchain(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([TOOLCHAIN, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def by_host(document: dict) -> dict[str, dict]:
    return {item["host"]: item for item in document["hosts"]}


def test_fleet_deploys_and_benches_every_host_at_most_forks_at_once_and_retries_the_failed_one(
        fleet: LoopbackFleet, deploy_artifacts: DeployArtifacts, tmp_path: Path) -> None:
    store = tmp_path / "store"
    artifact = artifact_copy(deploy_artifacts.loadable_by_1_16, store)
    common = ["-i", str(fleet.inventory), "--artifact", str(artifact), "--artifacts", str(store), "--json"]

    fleet.counter.reset()
    deployed = toolchain("fleet", "deploy", *common, "--forks", "2")
    assert deployed.returncode == 0, deployed.stderr
    document = json.loads(deployed.stdout)
    assert {item["status"] for item in document["hosts"]} == {"ok"} and len(document["hosts"]) == 4
    assert all(item["bytes_sent"] > 0 for item in document["hosts"])
    assert fleet.counter.peak == 2, fleet.counter.spans  # never more than --forks at once, and really two in parallel
    assert "Traceback" not in deployed.stderr

    # one host lost its copy: bench deploys there first
    receipt = fleet.hosts["board-b"].workdir / artifact.name / "deploy.json"
    receipt.unlink()
    fleet.counter.reset()
    benched = toolchain("fleet", "bench", *common, "--limit", "boards", "--forks", "3", *BENCH_QUICK)
    assert benched.returncode == 1, benched.stderr  # the exit code: how many hosts failed
    document = json.loads(benched.stdout)
    hosts = by_host(document)
    assert fleet.counter.overlap(slack=0.5) <= 3, fleet.counter.spans
    assert document["failed"] == ["board-flaky"] and hosts["board-flaky"]["status"] == "failed"
    assert "signal 9" in hosts["board-flaky"]["error"] or "SIGKILL" in hosts["board-flaky"]["error"]
    assert fleet.kill_marker.exists()
    for name in ("board-a", "board-b", "board-slow"):
        assert hosts[name]["status"] == "ok", hosts[name]
        record = json.loads(Path(hosts[name]["bench_record"]).read_text())
        assert record["remote"]["host"] == name and record["remote"]["address"] == hosts[name]["address"]
        assert {row["variant"] for row in hosts[name]["rows"]} == {"fp32", "int8"}
    assert hosts["board-b"]["deployed"] and not hosts["board-a"]["deployed"]
    assert "error: 1 of 4 host(s) failed: board-flaky" in benched.stderr and "--retry-failed" in benched.stderr

    retried = toolchain("fleet", "bench", *common, "--retry-failed", *BENCH_QUICK)
    assert retried.returncode == 0, retried.stderr
    again = json.loads(retried.stdout)
    assert [item["host"] for item in again["hosts"]] == ["board-flaky"] and again["hosts"][0]["status"] == "ok"
    record = json.loads((store / "fleet" / "last-bench.json").read_text())
    assert record["failed"] == [] and {item["host"] for item in record["hosts"]} == set(fleet.hosts)

    nothing = toolchain("fleet", "bench", *common, "--retry-failed")
    assert nothing.returncode == 0 and "no failed host to retry" in nothing.stderr

    # the report's per-host view: one row per host of the newest bench of the model there
    from toolchain.report.collect import collect
    from toolchain.report.pages import report_blocks

    view = next(block for block in report_blocks(collect(store)) if getattr(block, "role", "") == "hosts")
    assert sorted(row[0] for row in view.rows) == sorted(fleet.hosts)
    assert all(row[1] == "hps-06-0.25x" and row[6] == 1 for row in view.rows)


def test_an_unreachable_host_fails_alone_and_a_bad_inventory_is_one_error(fleet: LoopbackFleet,
                                                                          deploy_artifacts: DeployArtifacts,
                                                                          tmp_path: Path) -> None:
    from tests.fixtures.sshd import free_port

    inventory = tmp_path / "inventory.ini"
    inventory.write_text(fleet.inventory.read_text().replace("[slow]", f"board-down ansible_host=127.0.0.1 "
                                                             f"ansible_port={free_port()}\n\n[slow]"))
    store = tmp_path / "store"
    artifact = artifact_copy(deploy_artifacts.loadable_by_1_16, store)
    result = toolchain("fleet", "deploy", "-i", str(inventory), "--limit", "board-a,board-down", "--artifact",
                       str(artifact), "--artifacts", str(store))
    assert result.returncode == 1, result.stderr
    assert "board-down: failed" in result.stderr and "refused" in result.stderr
    assert "board-a: ok" in result.stderr and "Traceback" not in result.stderr

    broken = tmp_path / "broken.ini"
    broken.write_text("[boards\n")
    result = toolchain("fleet", "deploy", "-i", str(broken), "--artifact", str(artifact))
    assert result.returncode == 1 and result.stderr.startswith(f"error: {broken}:1:") and "\nhint: " in result.stderr
    result = toolchain("fleet", "deploy", "-i", str(fleet.inventory), "--limit", "nosuch", "--artifact", str(artifact))
    assert result.returncode == 2 and "matches no host" in result.stderr


def agents_on(workdir: Path) -> list[str]:
    """The benchmark agents (and their measuring workers) running on a loopback target: processes of the target's
    login user (this one) whose command line names that target's work folder."""
    import getpass

    found = subprocess.run(["pgrep", "-a", "-u", getpass.getuser(), "-f", "bench_agent"], capture_output=True,
                           text=True).stdout.splitlines()
    return [line for line in found if str(workdir) in line]


def test_ctrl_c_mid_bench_stops_every_agent_releases_the_locks_and_keeps_nothing_half_written(
        fleet: LoopbackFleet, deploy_artifacts: DeployArtifacts, tmp_path: Path) -> None:
    from toolchain.remote.session import TargetSession
    from toolchain.remote.target import open_transport

    names = ("board-a", "board-b")
    store = tmp_path / "store"
    artifact = artifact_copy(deploy_artifacts.loadable_by_1_16, store)
    process = subprocess.Popen([TOOLCHAIN, "fleet", "bench", "-i", str(fleet.inventory), "--limit", ",".join(names),
                                "--artifact", str(artifact), "--artifacts", str(store), "--forks", "2",
                                # a long warmup reports every 50,000 runs: the agents are silent when Ctrl-C comes
                                "--threads", "1", "--warmup", "1000000", "--runs", "3"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workdirs = [fleet.hosts[name].workdir for name in names]
    deadline = time.monotonic() + 120
    # both hosts are mid-bench: each one's agent has a worker measuring (deployed first where it had to be)
    while not all(any("--worker" in line for line in agents_on(workdir)) for workdir in workdirs):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    time.sleep(1)
    before = {workdir: {path.name for path in (workdir / artifact.name).iterdir()} for workdir in workdirs}
    # what the agents would write: their results in the artifact's folder, their workers' in scratch folders
    outputs = [Path(match) for workdir in workdirs for line in agents_on(workdir)
               for match in re.findall(r"--output (\S+)", line)]
    assert len({path.parent for path in outputs}) == 4, outputs  # per host: the artifact's folder and a scratch
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    # one line: what was interrupted and what is left; one hint: how to finish
    assert lines[-2] == (f"error: interrupted: fleet bench of {artifact.parent.name} stopped on board-a, board-b; "
                         "not started: none; finished: none"), stderr
    assert lines[-1].startswith("hint: ") and f"-i {fleet.inventory} --retry-failed" in lines[-1]
    assert "Traceback" not in stderr
    record = json.loads((store / "fleet" / "last-bench.json").read_text())
    assert record["interrupted"] and set(record["failed"]) == set(names)
    assert [path.name for path in (store / "fleet").iterdir()] == ["last-bench.json"]
    # on the targets: no agent left measuring after a short grace period
    deadline = time.monotonic() + 5
    while any(agents_on(workdir) for workdir in workdirs) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [agents_on(workdir) for workdir in workdirs] == [[], []]
    assert fleet.counter.open == 0
    # nothing half-written on either side: no bench record here, no new result and no scratch folder there
    assert not (artifact / "bench").exists() or list((artifact / "bench").iterdir()) == []
    for workdir in workdirs:
        assert {path.name for path in (workdir / artifact.name).iterdir()} == before[workdir]
    for path in outputs:
        assert not path.exists()
        assert path.parent.name.startswith("toolchain-bench-") == (not path.parent.exists()), path
    hosts = {host.name: host for host in read_inventory(fleet.inventory)}
    for name in names:  # and each target's lock is free again
        profile = host_profile(hosts[name], FleetOptions()).with_overrides(command_timeout=10)
        with open_transport(profile) as transport:
            session = TargetSession(transport, profile)
            session.read_facts()
            with session.locked("test: the lock is free again"):
                pass


def test_fleet_deploys_and_benches_a_host_behind_a_jump_host_beside_a_direct_one(
        fleet: LoopbackFleet, route: Route, deploy_artifacts: DeployArtifacts, tmp_path: Path) -> None:  # noqa: F811
    import socket

    network, workdir = route.network, tmp_path / "behind-work"
    with pytest.raises(OSError):  # this machine has no route to the target: only the jump host reaches it
        socket.create_connection((network.target_address, 22), timeout=2).close()
    inventory = tmp_path / "inventory.ini"
    # what an Ansible user writes for a host behind a bastion
    inventory.write_text(fleet.inventory.read_text() + "\n[behind]\n"
                         f"board-behind ansible_host={network.target_address} ansible_user=root "
                         f"ansible_ssh_private_key_file={route.target.client_key} "
                         f"ansible_ssh_common_args='-o ProxyJump=root@{network.jump_address}' "
                         f"toolchain_known_hosts={route.known_hosts} toolchain_workdir={workdir} "
                         f"ansible_python_interpreter={sys.executable}\n")
    store = tmp_path / "store"
    artifact = artifact_copy(deploy_artifacts.loadable_by_1_16, store)
    common = ["-i", str(inventory), "--limit", "board-a,behind", "--artifact", str(artifact), "--artifacts",
              str(store), "--forks", "2", "--json"]
    jumped = f"jump host root@{network.jump_address}:22"

    deployed = toolchain("fleet", "deploy", *common)
    assert deployed.returncode == 0, deployed.stderr
    hosts = by_host(json.loads(deployed.stdout))
    assert set(hosts) == {"board-a", "board-behind"} and {item["status"] for item in hosts.values()} == {"ok"}
    assert hosts["board-behind"]["via"] == jumped and hosts["board-a"]["via"] == ""
    assert hosts["board-behind"]["address"] == f"root@{network.target_address}:22"
    assert hosts["board-behind"]["bytes_sent"] > 0 and (workdir / artifact.name / "deploy.json").is_file()
    assert "board-behind: ok in " in deployed.stderr and f"via {jumped}" in deployed.stderr

    benched = toolchain("fleet", "bench", *common, *BENCH_QUICK)
    assert benched.returncode == 0, benched.stderr
    hosts = by_host(json.loads(benched.stdout))
    assert {item["status"] for item in hosts.values()} == {"ok"} and hosts["board-behind"]["via"] == jumped
    assert not hosts["board-behind"]["deployed"]  # found there, through the jump host
    record = json.loads(Path(hosts["board-behind"]["bench_record"]).read_text())
    assert record["remote"]["host"] == "board-behind" and record["remote"]["address"] == hosts["board-behind"]["address"]
    assert {row["variant"] for row in hosts["board-behind"]["rows"]} == {"fp32", "int8"}
    stored = by_host(json.loads((store / "fleet" / "last-bench.json").read_text()))
    assert stored["board-behind"]["via"] == jumped


@pytest.mark.emulated
@pytest.mark.slow
def test_fleet_bench_deploys_to_and_benches_the_emulated_bluebox_beside_a_loopback_host(
        fleet: LoopbackFleet, deploy_artifacts: DeployArtifacts, tmp_path: Path) -> None:
    from tests.fixtures.emulated import emulation_prerequisites
    from toolchain.providers.emulated import USER, EmulatedBluebox

    emulation_prerequisites()
    instance = EmulatedBluebox("fleet", "10.204.0")  # namespace tc-fleet, this part's own subnet
    try:
        instance.up(fresh=True)
        inventory = tmp_path / "inventory.ini"
        inventory.write_text(fleet.inventory.read_text() + "\n[emulated]\n"
                             f"bluebox-emu ansible_host={instance.address} ansible_user={USER} "
                             f"ansible_ssh_private_key_file={instance.client_key} "
                             f"toolchain_known_hosts={instance.known_hosts} toolchain_target=emulated\n")
        store = tmp_path / "store"
        artifact = artifact_copy(deploy_artifacts.loadable_by_1_16, store)
        result = toolchain("fleet", "bench", "-i", str(inventory), "--limit", "emulated,board-a", "--artifact",
                           str(artifact), "--artifacts", str(store), "--forks", "2", "--threads", "1", "--warmup",
                           "1", "--runs", "3", "--json", timeout=900)
        assert result.returncode == 0, result.stderr
        hosts = by_host(json.loads(result.stdout))
        emulated = hosts["bluebox-emu"]
        assert emulated["status"] == "ok" and emulated["emulated"] and emulated["deployed"]
        assert emulated["bytes_sent"] > 0 and hosts["board-a"]["status"] == "ok"
        record = json.loads(Path(emulated["bench_record"]).read_text())
        assert record["target"]["arch"] == "aarch64" and record["remote"]["host"] == "bluebox-emu"
        assert record["target"]["emulated"] is True
    finally:
        instance.purge()
