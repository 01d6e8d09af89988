"""The generic linux target: the default for `--host` alone; arch and Python come from the target's preflight."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fixtures.deploy import DeployArtifacts, artifact_copy
from tests.fixtures.sshd import LOOPBACK, LoopbackSSHD
from toolchain.errors import TargetConfigError, TargetIncompatibleError
from toolchain.remote.deploy import deploy
from toolchain.remote.session import TargetSession
from toolchain.remote.target import ANY_ARCH, DEFAULT_TARGET, load_profile, open_transport, parse_profile

TOOLCHAIN = str(Path(sys.executable).with_name("toolchain"))


def test_the_default_target_is_the_generic_linux_profile() -> None:
    profile = load_profile(None)
    assert DEFAULT_TARGET == "linux" and profile.name == "linux" and profile.arch == ANY_ARCH
    assert profile.pythons == ("/opt/python3.11/bin/python3", "python3") and profile.python == profile.pythons[0]
    assert profile.onnxruntime == "newest" and profile.host is None and profile.user is None


def test_a_python_search_list_parses_and_python_given_alone_replaces_it(tmp_path: Path) -> None:
    profile = parse_profile(tmp_path / "target.toml", '[target]\npython = ["/opt/py/bin/python3", "python3"]\n')
    assert profile.pythons == ("/opt/py/bin/python3", "python3")
    assert profile.with_overrides(python="/usr/bin/python3").pythons == ("/usr/bin/python3",)
    with pytest.raises(TargetConfigError, match="non-empty list"):
        parse_profile(tmp_path / "target.toml", "[target]\npython = []\n")
    with pytest.raises(TargetConfigError, match="non-empty list"):
        parse_profile(tmp_path / "target.toml", '[target]\npython = ["python3", 3]\n')


@pytest.mark.sshd
def test_the_first_python_of_the_list_that_the_target_has_is_used(loopback_sshd: LoopbackSSHD,
                                                                  tmp_path: Path) -> None:
    profile = loopback_sshd.profile(tmp_path, python_search=(str(tmp_path / "no/python3"), sys.executable))
    with open_transport(profile) as transport:
        session = TargetSession(transport, profile)
        assert session.read_facts().python_executable == sys.executable and session.python == sys.executable
    absent = replace(profile, python_search=(str(tmp_path / "no/python3"), str(tmp_path / "none/python3")))
    with open_transport(absent) as transport, pytest.raises(TargetIncompatibleError) as caught:
        TargetSession(transport, absent).read_facts()
    assert "no/python3, " in caught.value.message and "--python" in (caught.value.hint or "")


def connection_options(loopback_sshd: LoopbackSSHD, tmp_path: Path) -> list[str]:
    """What a user types for a box without a profile of its own: address, port, login, key, known_hosts."""
    return ["--host", LOOPBACK, "--port", str(loopback_sshd.port), "--user", "root", "--identity-file",
            str(loopback_sshd.client_key), "--known-hosts", str(loopback_sshd.known_hosts(tmp_path))]


@pytest.mark.sshd
def test_target_check_with_only_host_options_takes_arch_and_python_from_the_target(loopback_sshd: LoopbackSSHD,
                                                                                    tmp_path: Path) -> None:
    checked = subprocess.run([TOOLCHAIN, "target", "check", *connection_options(loopback_sshd, tmp_path),
                              "--workdir", str(tmp_path / "work"), "--json"], capture_output=True, text=True,
                             timeout=120)
    assert checked.returncode == 0, checked.stderr
    answer = json.loads(checked.stdout)
    checks = {item["name"]: item for item in answer["checks"]}
    assert answer["profile"] == "linux" and checks["arch"]["status"] == "ok" and "any" in checks["arch"]["note"]
    # the list's first entry where it exists, else `python3` on the login's PATH
    assert checks["python"]["status"] == "ok"
    assert ("/opt/python3.11/" in checks["python"]["value"]) == Path("/opt/python3.11/bin/python3").exists()


@pytest.mark.sshd
def test_deploy_to_a_plain_linux_box_with_only_host_options(loopback_sshd: LoopbackSSHD, tmp_path: Path,
                                                            deploy_artifacts: DeployArtifacts) -> None:
    artifact = artifact_copy(deploy_artifacts.loadable_by_1_16, tmp_path / "artifacts")
    # this box's python3 has no onnxruntime and the tests have no package index: the venv's Python has one
    deployed = subprocess.run([TOOLCHAIN, "deploy", "--artifact", str(artifact), *connection_options(loopback_sshd, tmp_path),
                               "--workdir", str(tmp_path / "work"), "--python", sys.executable, "--json"],
                              capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stderr
    report = json.loads(deployed.stdout)
    assert report["profile"] == "linux" and report["bytes_sent"] > 0 and report["runtime"]["source"] == "system"
    profile = replace(load_profile("linux").with_overrides(
        host=LOOPBACK, port=loopback_sshd.port, user="root", identity_file=loopback_sshd.client_key,
        known_hosts=loopback_sshd.known_hosts(tmp_path), workdir=str(tmp_path / "work")),
        ssh_config=None, use_agent=False, min_free_mb=0, python_search=(str(tmp_path / "no/python3"), sys.executable))
    assert deploy(profile, artifact).bytes_sent == 0  # the same deploy, found through the search list
