"""Provisioning cannot write outside its folder, and no wheel is used without a sha256 it was checked against.

Crafted wheels are built here with zipfile; the index is a real HTTP server on 127.0.0.1 that `pip download`
talks to; the end-to-end cases deploy over the loopback OpenSSH server to the system Python (which has no
onnxruntime, so the tool provisions one from `--wheels`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import stat
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import require
from tests.fixtures.agent import agent_module
from tests.fixtures.deploy import DeployArtifacts, artifact_copy
from tests.fixtures.sshd import LOOPBACK, LoopbackSSHD
from tests.test_provision_wheels import EMULATED
from toolchain.errors import ProvisioningError
from toolchain.remote.agent_package import AGENT_DIR, HELPER
from toolchain.remote.provision import LOCK_FILE, SUMS_FILE, WheelIndex, select_wheel

TOOLCHAIN = str(Path(sys.executable).with_name("toolchain"))
SYSTEM_PYTHON = Path("/usr/bin/python3")
ORT_NAME = "onnxruntime-1.16.3-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"


def build_wheel(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    """A wheel (a zip) with these files, and these members marked as symbolic links (name -> link target)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def write_sums(folder: Path) -> Path:
    """SHA256SUMS of the folder's wheels, as `sha256sum *.whl > SHA256SUMS` writes it."""
    lines = [f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n" for path in sorted(folder.glob("*.whl"))]
    (folder / SUMS_FILE).write_text("".join(lines))
    return folder / SUMS_FILE


def dist_info(name: str, version: str, requires: str = "") -> dict[str, bytes]:
    """The .dist-info files pip reads from a wheel (METADATA and WHEEL)."""
    folder = f"{name}-{version}.dist-info"
    return {f"{folder}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{requires}".encode(),
            f"{folder}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"}


# --- the target-side unpacker -------------------------------------------------------------------


@pytest.mark.parametrize("member", ["demo-1.0.data/purelib//{outside}/pwned.py", "/{outside}/pwned.py",
                                    "demo-1.0.data/platlib/../../{outside}/pwned.py", "demo/./x.py",
                                    "demo\\..\\..\\pwned.py"])
def test_wheel_members_that_escape_after_any_prefix_are_refused(tmp_path: Path, member: str) -> None:
    helper = agent_module("helper")
    wheel = build_wheel(tmp_path / "demo-1.0-py3-none-any.whl",
                        {"demo/__init__.py": b"", member.format(outside=str(tmp_path).lstrip("/")): b"evil"})
    with zipfile.ZipFile(wheel) as archive, pytest.raises(helper.Refused, match="escapes the install folder"):
        helper.wheel_members(archive)


def test_wheel_members_that_are_links_are_refused(tmp_path: Path) -> None:
    helper = agent_module("helper")
    wheel = build_wheel(tmp_path / "demo-1.0-py3-none-any.whl", {"demo/__init__.py": b""},
                        links={"demo-1.0.data/purelib/demo/etc": "/etc"})
    with zipfile.ZipFile(wheel) as archive, pytest.raises(helper.Refused, match="link or special file"):
        helper.wheel_members(archive)


def test_install_runtime_writes_nothing_outside_its_folder_and_drops_the_refused_wheels(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    runtime = tmp_path / "work" / "runtime"
    runtime.mkdir(parents=True)
    wheel = build_wheel(runtime / "demo-1.0-py3-none-any.whl",
                        {"demo/__init__.py": b"", f"demo-1.0.data/purelib/{outside}/pwned.py": b"evil"})
    refused = subprocess.run([sys.executable, str(AGENT_DIR / HELPER), "install-runtime", str(runtime / "demo"),
                              "{}", str(wheel)], capture_output=True, text=True)
    assert refused.returncode == 2 and "escapes the install folder" in refused.stderr
    assert not outside.exists() and sorted(path.name for path in runtime.iterdir()) == []


# --- sha256 of every wheel ------------------------------------------------------------------------


def test_a_wheel_folder_without_sha256sums_is_refused(tmp_path: Path) -> None:
    build_wheel(tmp_path / ORT_NAME, {"onnxruntime/__init__.py": b""})
    index = WheelIndex(cache_dir=tmp_path / "cache", wheel_dir=tmp_path)
    wheel = select_wheel("onnxruntime", index.files("onnxruntime"), EMULATED)
    with pytest.raises(ProvisioningError) as caught:
        index.fetch(wheel, EMULATED)
    assert f"has no {SUMS_FILE}" in caught.value.message and "sha256sum *.whl" in (caught.value.hint or "")
    write_sums(tmp_path)
    assert index.fetch(wheel, EMULATED) == tmp_path / ORT_NAME


def test_a_wheel_that_does_not_match_sha256sums_is_refused(tmp_path: Path) -> None:
    path = build_wheel(tmp_path / ORT_NAME, {"onnxruntime/__init__.py": b""})
    write_sums(tmp_path)
    build_wheel(path, {"onnxruntime/__init__.py": b"import os; os.system('id')"})
    index = WheelIndex(cache_dir=tmp_path / "cache", wheel_dir=tmp_path)
    wheel = select_wheel("onnxruntime", index.files("onnxruntime"), EMULATED)
    with pytest.raises(ProvisioningError, match=f"does not match its sha256 in .*{SUMS_FILE}"):
        index.fetch(wheel, EMULATED)


class _Index(BaseHTTPRequestHandler):
    """A PEP 691 simple index of one folder's wheels (JSON listings, files by name)."""

    folder: Path
    published: dict[str, str]

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        parts = [part for part in self.path.split("?")[0].split("/") if part]
        if parts[:1] == ["files"] and len(parts) == 2 and (self.folder / parts[1]).is_file():
            self._reply((self.folder / parts[1]).read_bytes(), "application/octet-stream")
        elif parts[:1] == ["simple"] and len(parts) == 2:
            base = f"http://{LOOPBACK}:{self.server.server_address[1]}/files/"
            files = [{"filename": path.name, "url": base + path.name,
                      "hashes": {"sha256": self.published[path.name]} if path.name in self.published else {}}
                     for path in sorted(self.folder.glob(f"{parts[1]}-*.whl"))]
            document = {"meta": {"api-version": "1.0"}, "name": parts[1], "files": files}
            self._reply(json.dumps(document).encode(), "application/vnd.pypi.simple.v1+json")
        else:
            self.send_error(404)

    def _reply(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_index(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """A package index on 127.0.0.1 serving tmp_path/served; yields (url, folder, published hashes)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = type("Index", (_Index,), {"folder": folder, "published": {}})
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}/simple", folder, handler.published
    finally:
        server.shutdown()
        server.server_close()


def test_a_download_without_a_published_sha256_is_pinned_by_the_lock_file(
        tmp_path: Path, local_index: tuple[str, Path, dict[str, str]]) -> None:
    url, served, _ = local_index
    build_wheel(served / ORT_NAME, {"onnxruntime/__init__.py": b"", **dist_info("onnxruntime", "1.16.3")})
    index = WheelIndex(cache_dir=tmp_path / "cache", index_url=url)
    wheel = select_wheel("onnxruntime", index.files("onnxruntime"), EMULATED)
    first = index.fetch(wheel, EMULATED)
    pinned = hashlib.sha256(first.read_bytes()).hexdigest()
    assert (tmp_path / "cache" / LOCK_FILE).read_text() == f"{pinned}  {ORT_NAME}\n"
    build_wheel(served / ORT_NAME, {"onnxruntime/__init__.py": b"import os; os.system('id')",
                                    **dist_info("onnxruntime", "1.16.3")})
    first.unlink()  # the cache was cleared: the next run downloads again, and meets a different file
    with pytest.raises(ProvisioningError, match=f"does not match its sha256 in .*{LOCK_FILE}"):
        index.fetch(wheel, EMULATED)
    assert not first.exists()


def test_a_download_that_does_not_match_the_published_sha256_is_refused(
        tmp_path: Path, local_index: tuple[str, Path, dict[str, str]]) -> None:
    url, served, published = local_index
    build_wheel(served / ORT_NAME, {"onnxruntime/__init__.py": b"", **dist_info("onnxruntime", "1.16.3")})
    published[ORT_NAME] = "0" * 64
    index = WheelIndex(cache_dir=tmp_path / "cache", index_url=url)
    wheel = select_wheel("onnxruntime", index.files("onnxruntime"), EMULATED)
    with pytest.raises(ProvisioningError, match=ORT_NAME):
        index.fetch(wheel, EMULATED)
    assert not (tmp_path / "cache" / ORT_NAME).exists()


# --- end to end: `toolchain deploy --wheels` over SSH ---------------------------------------------------


def target_wheels(folder: Path, evil_members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    """An onnxruntime and a numpy wheel for this machine's system Python, the first carrying `evil_members`."""
    machine = platform.machine()
    folder.mkdir()
    build_wheel(folder / f"onnxruntime-1.32.0-cp311-cp311-manylinux_2_17_{machine}.whl",
                {"onnxruntime/__init__.py": b"", **evil_members,
                 **dist_info("onnxruntime", "1.32.0", "Requires-Dist: numpy>=1.21.6\n")}, links)
    build_wheel(folder / f"numpy-2.4.6-cp311-cp311-manylinux_2_17_{machine}.whl", {"numpy/__init__.py": b""})
    write_sums(folder)
    return folder


def deploy_with_wheels(loopback_sshd: LoopbackSSHD, tmp_path: Path, artifact: Path,
                       wheels: Path) -> subprocess.CompletedProcess:
    require(SYSTEM_PYTHON.is_file() and sys.version_info[:2] == (3, 11),
            "needs the system python3 (3.11, without onnxruntime) as the target's Python")
    return subprocess.run([TOOLCHAIN, "deploy", "--artifact", str(artifact), "--host", LOOPBACK, "--port",
                           str(loopback_sshd.port), "--user", "root", "--identity-file", str(loopback_sshd.client_key),
                           "--known-hosts", str(loopback_sshd.known_hosts(tmp_path)), "--workdir",
                           str(tmp_path / "work"), "--python", str(SYSTEM_PYTHON), "--wheels", str(wheels)],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.sshd
@pytest.mark.parametrize("crafted", ["absolute after purelib", "link"])
def test_deploy_with_a_crafted_wheel_writes_nothing_outside_the_runtime_folder(
        loopback_sshd: LoopbackSSHD, tmp_path: Path, deploy_artifacts: DeployArtifacts, crafted: str) -> None:
    outside = tmp_path / "outside"
    evil = {f"onnxruntime-1.32.0.data/purelib/{outside}/pwned.py": b"evil"} if crafted != "link" else {}
    links = {"onnxruntime-1.32.0.data/purelib/onnxruntime/etc": "/etc"} if crafted == "link" else None
    artifact = artifact_copy(deploy_artifacts.loadable_by_1_16, tmp_path / "artifacts")
    refused = deploy_with_wheels(loopback_sshd, tmp_path, artifact, target_wheels(tmp_path / "wheels", evil, links))
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and lines[-2].startswith("error: unpacking the wheels on ")
    assert ("escapes the install folder" if crafted != "link" else "link or special file") in lines[-2]
    assert lines[-1].startswith("hint: ")
    assert not outside.exists()
    runtime = tmp_path / "work" / "runtime"
    assert not runtime.exists() or list(runtime.iterdir()) == []
    assert not (tmp_path / "work" / artifact.name).exists()


@pytest.mark.sshd
def test_deploy_refuses_a_wheel_whose_sha256_is_wrong_before_uploading(
        loopback_sshd: LoopbackSSHD, tmp_path: Path, deploy_artifacts: DeployArtifacts) -> None:
    wheels = target_wheels(tmp_path / "wheels", {})
    wheel = next(wheels.glob("onnxruntime-*.whl"))
    with open(wheel, "ab") as handle:
        handle.write(b"\0")
    artifact = artifact_copy(deploy_artifacts.loadable_by_1_16, tmp_path / "artifacts")
    refused = deploy_with_wheels(loopback_sshd, tmp_path, artifact, wheels)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and lines[-2] == f"error: {wheel} does not match its sha256 in {wheels / SUMS_FILE}"
    assert not (tmp_path / "work" / "runtime").exists()
