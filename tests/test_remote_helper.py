"""The target-side package (helper, benchmark agent, bootstrap) and the verified upload, on this machine.

The scripts must run on a stock Bluebox's Python 3.5; the package is installed once per version and run
by path; the upload must never put a wrong file in place.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, require
from tests.fixtures.agent import agent_module
from toolchain.errors import CommandFailedError, DeployError
from toolchain.hashing import sha256_file
from toolchain.remote import agent_package
from toolchain.remote.agent_package import AGENT_DIR, HELPER, UPLOAD_PREFIX
from toolchain.remote.session import LocalFile, TargetSession
from toolchain.remote.target import TargetProfile
from toolchain.transport import LocalTransport

VERMIN = Path(sys.executable).with_name("vermin")
HELPER_PATH = AGENT_DIR / HELPER


@pytest.mark.parametrize("script", sorted(AGENT_DIR.glob("*.py")), ids=lambda path: path.stem)
def test_target_side_scripts_run_on_python_3_5(script: Path) -> None:
    require(VERMIN.is_file(), "vermin is not installed (pip install -e '.[dev]')")
    require(script.is_file(), f"{script} is not there yet")
    checked = subprocess.run([str(VERMIN), "-t=3.5-", "--no-tips", "--violations", "--eval-annotations",
                              str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def local_session(tmp_path: Path) -> TargetSession:
    profile = TargetProfile(name="local", host="local", python=sys.executable, workdir=str(tmp_path / "work"),
                            min_free_mb=0)
    session = TargetSession(LocalTransport(), profile)
    session.read_facts()
    return session


def files_in(folder: Path, names: dict[str, bytes]) -> list[LocalFile]:
    folder.mkdir(parents=True, exist_ok=True)
    found = []
    for name, data in names.items():
        (folder / name).write_bytes(data)
        found.append(LocalFile(name, folder / name, sha256_file(folder / name), len(data)))
    return found


def test_local_facts_describe_this_machine(tmp_path: Path) -> None:
    facts = local_session(tmp_path).require_facts()
    assert facts.python_executable == sys.executable and facts.system_runtime.onnxruntime
    assert facts.workdir == str(tmp_path / "work") and not facts.workdir_exists


def test_upload_sends_only_what_changed(tmp_path: Path) -> None:
    session = local_session(tmp_path)
    target = str(tmp_path / "work" / "a")
    first = session.upload(files_in(tmp_path / "src", {"x.bin": b"x" * 1000, "y.bin": b"y"}), target, what="test")
    assert sorted(first.sent) == ["x.bin", "y.bin"] and first.bytes_sent == 1001
    second = session.upload(files_in(tmp_path / "src", {"x.bin": b"x" * 1000, "y.bin": b"changed"}), target,
                            what="test")
    assert second.sent == ["y.bin"] and second.unchanged == ["x.bin"] and second.bytes_sent == 7
    assert (Path(target) / "y.bin").read_bytes() == b"changed"


def test_a_file_corrupted_on_the_way_is_never_put_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    session = local_session(tmp_path)
    target = tmp_path / "work" / "a"
    files = files_in(tmp_path / "src", {"a.bin": b"a" * 100, "b.bin": b"b" * 100, "deploy.json": b"{}"})
    real_put = LocalTransport.put

    def flipping_put(self: LocalTransport, local: Path, remote: str, **kwargs: object) -> int:
        sent = real_put(self, local, remote)
        if local.name == "b.bin":
            Path(remote).write_bytes(b"B" * 100)  # what a bad link or disk would do
        return sent

    monkeypatch.setattr(LocalTransport, "put", flipping_put)
    with pytest.raises(DeployError, match="b.bin arrived corrupted"):
        session.upload(files, str(target), what="test")
    assert sorted(path.name for path in target.iterdir()) == ["a.bin"]  # no b.bin, no receipt, no temporaries


def test_the_target_lock_reports_its_holder_and_ends_with_its_process(tmp_path: Path) -> None:
    session = local_session(tmp_path)
    with session.locked("deploy of x"):
        busy = subprocess.run([sys.executable, str(HELPER_PATH), "lock", session.remote_path(".lock"), "{}"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        assert busy.returncode == 3 and json.loads(busy.stdout.removeprefix("BUSY "))["command"] == "deploy of x"
    free = subprocess.run([sys.executable, str(HELPER_PATH), "lock", session.remote_path(".lock"), "{}"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert free.returncode == 0 and free.stdout.startswith("LOCKED")


def test_wheel_unpacking_maps_data_folders_and_refuses_escaping_members(tmp_path: Path) -> None:
    helper = agent_module("helper")
    wheel_members, Refused = helper.wheel_members, helper.Refused
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo/__init__.py", "")
        archive.writestr("demo-1.0.data/platlib/demo_ext.so", "")
        archive.writestr("demo-1.0.data/scripts/demo-tool", "")
    with zipfile.ZipFile(wheel) as archive:
        assert sorted(target for _, target in wheel_members(archive)) == ["demo/__init__.py", "demo_ext.so"]
    evil = tmp_path / "evil-1.0-py3-none-any.whl"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../outside.py", "")
    with zipfile.ZipFile(evil) as archive, pytest.raises(Refused):
        wheel_members(archive)


def test_upload_leftovers_of_a_broken_run_are_removed_by_the_next_one(tmp_path: Path) -> None:
    session = local_session(tmp_path)
    target = tmp_path / "work" / "a"
    target.mkdir(parents=True)
    (target / f"{UPLOAD_PREFIX}dead-x.bin").write_bytes(b"partial")
    result = session.upload(files_in(tmp_path / "src", {"x.bin": b"x"}), str(target), what="test")
    assert result.removed_partial == [f"{UPLOAD_PREFIX}dead-x.bin"]
    assert sorted(path.name for path in target.iterdir()) == ["x.bin"]


def test_the_preflight_writes_nothing_on_the_target(tmp_path: Path) -> None:
    local_session(tmp_path)
    assert not (tmp_path / "work").exists()


def test_the_preflights_stdin_program_runs_on_python_3_5(tmp_path: Path) -> None:
    require(VERMIN.is_file(), "vermin is not installed (pip install -e '.[dev]')")
    program = tmp_path / "program.py"
    program.write_bytes(agent_package.stdin_program(HELPER))
    checked = subprocess.run([str(VERMIN), "-t=3.5-", "--no-tips", "--violations", str(program)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_package_is_installed_once_per_version_and_run_by_path(tmp_path: Path) -> None:
    session = local_session(tmp_path)
    folder = Path(session.agent_dir())
    assert folder == tmp_path / "work" / ".toolchain" / agent_package.agent_package().folder_name
    assert sorted(path.name for path in folder.iterdir()) == sorted(agent_package.SHIPPED)
    assert session.helper("free", str(tmp_path))["free_bytes"] > 0
    mtime = folder.stat().st_mtime_ns
    again = local_session(tmp_path)  # a new connection finds it and sends nothing
    assert again.agent_dir() == str(folder) and folder.stat().st_mtime_ns == mtime
    assert not [path for path in folder.parent.iterdir() if path.name.startswith(".agent-")]


def test_the_workdir_is_expanded_on_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    profile = TargetProfile(name="local", host="local", python=sys.executable, workdir="~/tc", min_free_mb=0)
    session = TargetSession(LocalTransport(), profile)
    assert session.require_facts().workdir == str(tmp_path / "tc")
    assert session.agent_dir().startswith(str(tmp_path / "tc" / ".toolchain" / "agent-"))


def test_the_bootstrap_is_short_and_refuses_a_corrupted_package(tmp_path: Path) -> None:
    # dropbear refuses command lines over ~9,000 bytes; the bootstrap is the only code sent on one
    assert len(agent_package.bootstrap_source().encode()) < 1024
    command = agent_package.bootstrap_command(sys.executable, str(tmp_path / "work"), install=True)
    with pytest.raises(CommandFailedError, match="arrived corrupted"):
        LocalTransport().run(command, stdin=agent_package.agent_package().archive + b"x")
    assert not (tmp_path / "work").exists()


def _constants(path: Path) -> dict[str, object]:
    tree = ast.parse(path.read_text())
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)}


def test_the_hosts_copies_of_the_helpers_constants_agree_with_it() -> None:
    helper = _constants(HELPER_PATH)
    assert (helper["UPLOAD_PREFIX"], helper["EXIT_BUSY"]) == (agent_package.UPLOAD_PREFIX, agent_package.EXIT_BUSY)


def test_the_host_package_imports_nothing_from_the_target_side() -> None:
    target_side = {path.stem for path in AGENT_DIR.glob("*.py")}
    for path in (REPO / "toolchain").rglob("*.py"):
        if path.parent == AGENT_DIR:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [name for name in names if name.split(".")[0] in target_side
                        or name.startswith("toolchain.agent")], path
