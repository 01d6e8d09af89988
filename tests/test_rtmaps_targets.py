"""`toolchain deploy --rtmaps` and the RTMaps component running on targets: the loopback sshd and the emulated Bluebox.

The component runs there under the stand-in of RTMaps' Python API (tests/rtmaps_standin/, copied to the
target by the test), with the target's own Python, numpy and onnxruntime, and must give the artifact's
answers (top-1 agreement 100 %, a host tie counting whichever tied class is picked).
"""

from __future__ import annotations

import json
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.fixtures.deploy import DeployArtifacts, artifact_copy
from tests.fixtures.emulated import emulation_prerequisites
from tests.fixtures.rtmaps import check_golden, read_golden, standin_files
from tests.fixtures.sshd import LOOPBACK, FlakyProxy, LoopbackSSHD
from tests.test_deploy_loopback import TOOLCHAIN
from toolchain.artifacts import load_artifact, read_manifest
from toolchain.errors import ConnectionDroppedError
from toolchain.hashing import sha256_file
from toolchain.providers.emulated import EmulatedBluebox
from toolchain.remote.agent_package import UPLOAD_PREFIX
from toolchain.remote.deploy import DeployReport, deploy
from toolchain.remote.session import TargetSession
from toolchain.remote.target import TargetProfile, load_profile, open_transport
from toolchain.rtmaps import COMPONENT_FILES, COMPONENT_NAME, DEFAULT_FOLDER, GOLDEN_NAME, README_NAME, component_files

# an instance of this module's own (namespace tc-rtm, 10.202.9.0/24), apart from the suite's tc-pytest
EMULATED_INSTANCE, EMULATED_SUBNET = "rtm", "10.202.9"


def run_on_target(profile: TargetProfile, report: DeployReport, properties: dict[str, str]) -> dict:
    """Copy the stand-in to the target and run the deployed component's lifecycle on its golden frames there."""
    assert report.runtime is not None
    with open_transport(profile) as transport:
        session = TargetSession(transport, profile)
        session.read_facts()
        standin = session.remote_path("rtmaps-standin")
        for relative, local in standin_files():
            remote = f"{standin}/{relative}"
            transport.run(["mkdir", "-p", remote.rsplit("/", 1)[0]], label="stand-in folder")
            transport.put(local, remote)
        argv = [session.python, f"{standin}/diagram.py", f"{report.rtmaps_dir}/{COMPONENT_NAME}",
                f"{report.rtmaps_dir}/{GOLDEN_NAME}", "--output", "-"]
        for name, value in sorted(properties.items()):
            argv += ["--property", f"{name}={value}"]
        finished = transport.run(argv, env=report.runtime.env(), timeout=900, check=False, label="RTMaps stand-in")
    assert finished.stdout, finished.stderr
    return json.loads(finished.stdout)


def remote_component(report: DeployReport, root: Path = Path("/")) -> Path:
    return root / report.rtmaps_dir.lstrip("/")


def check_deployed(report: DeployReport, artifact: Path, root: Path = Path("/")) -> None:
    """The component folder beside the models: exactly the component's files, pointing at the INT8 model there."""
    folder = remote_component(report, root)
    assert report.rtmaps_dir == f"{report.remote_dir}/rtmaps"
    assert sorted(path.name for path in folder.iterdir()) == sorted(COMPONENT_FILES)
    source = (folder / COMPONENT_NAME).read_text()
    assert f'"default_model_path": "{report.remote_dir}/model.int8.onnx"' in source
    assert expected_hashes(artifact, report.remote_dir) == {path.name: sha256_file(path) for path in folder.iterdir()}


def expected_hashes(artifact: Path, remote_dir: str) -> dict[str, str]:
    """The component files made here for that model folder: what must arrive (they are deterministic)."""
    with tempfile.TemporaryDirectory() as folder:
        files, _ = component_files(load_artifact(artifact), remote_dir, Path(folder))
        return {item.name: item.sha256 for item in files}


@pytest.fixture
def artifact(deploy_artifacts: DeployArtifacts, tmp_path: Path) -> Path:
    return artifact_copy(deploy_artifacts.loadable_by_1_16, tmp_path / "artifacts")


@pytest.mark.sshd
def test_deploy_rtmaps_places_the_component_beside_the_model_and_it_answers_as_the_artifact_there(
        loopback_sshd: LoopbackSSHD, tmp_path: Path, artifact: Path) -> None:
    profile = loopback_sshd.profile(tmp_path)
    report = deploy(profile, artifact, rtmaps=True)
    assert report.rtmaps_upload is not None and report.rtmaps_upload.sent == list(COMPONENT_FILES)
    check_deployed(report, artifact)
    ties = read_manifest(artifact).accuracy.ties
    golden = read_golden(remote_component(report) / GOLDEN_NAME)
    check_golden(run_on_target(profile, report, {}), golden, "int8", ties.get("int8", {}))
    fp32 = run_on_target(profile, report, {"model_path": f"{report.remote_dir}/model.fp32.onnx"})
    check_golden(fp32, golden, "fp32", ties.get("fp32", {}), atol=1e-4)
    again = deploy(profile, artifact, rtmaps=True)
    assert again.bytes_sent == 0 and again.rtmaps_upload is not None and again.rtmaps_upload.sent == []


@pytest.mark.sshd
def test_the_deploy_command_with_rtmaps_makes_the_component_there_says_where_and_is_idempotent(
        loopback_sshd: LoopbackSSHD, tmp_path: Path, artifact: Path) -> None:
    assert not (artifact / DEFAULT_FOLDER).exists()  # no `toolchain rtmaps` ran: deploy makes the component itself
    target = loopback_sshd.profile_file(tmp_path, "lab", loopback_sshd.known_hosts(tmp_path), platform.machine())
    command = [TOOLCHAIN, "deploy", "--artifact", str(artifact), "--target", str(target), "--host", LOOPBACK,
               "--port", str(loopback_sshd.port), "--identity-file", str(loopback_sshd.client_key),
               "--known-hosts", str(tmp_path / "known_hosts"), "--rtmaps"]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    remote_dir = f"{tmp_path / 'work'}/{artifact.name}"
    rtmaps_dir = f"{remote_dir}/{DEFAULT_FOLDER}"
    where = f"{LOOPBACK}:{loopback_sshd.port}:{rtmaps_dir}"
    assert ("the artifact has no RTMaps component yet (`toolchain rtmaps` writes one here): making its RTMaps "
            f"component for root@{where} (it opens {remote_dir}/model.int8.onnx there)") in first.stderr
    assert (f"RTMaps component in root@{where}: {COMPONENT_NAME}, {GOLDEN_NAME} and {README_NAME}, beside the "
            f"model it opens ({remote_dir}/model.int8.onnx); 3 file(s) sent, 0 unchanged") in first.stderr
    rows = {line.split()[0]: line.split()[-1] for line in first.stdout.splitlines() if line.split()}
    assert all(rows[name] == "sent" for name in COMPONENT_FILES)
    folder = Path(rtmaps_dir)
    assert sorted(path.name for path in folder.iterdir()) == sorted(COMPONENT_FILES)
    assert (folder.parent / "model.int8.onnx").is_file() and (folder.parent / "model.fp32.onnx").is_file()
    assert f'"default_model_path": "{remote_dir}/model.int8.onnx"' in (folder / COMPONENT_NAME).read_text()
    assert expected_hashes(artifact, remote_dir) == {path.name: sha256_file(path) for path in folder.iterdir()}
    assert not (artifact / DEFAULT_FOLDER).exists()  # made for the target, not left in the artifact
    again = subprocess.run(command + ["--json"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["bytes_sent"] == 0 and report["files_sent"] == []
    assert report["rtmaps"] == {"dir": rtmaps_dir, "component": f"{rtmaps_dir}/{COMPONENT_NAME}",
                                "model_path": f"{remote_dir}/model.int8.onnx", "files_sent": [],
                                "files_unchanged": list(COMPONENT_FILES)}
    # a component `toolchain rtmaps` wrote into the artifact (for this machine's paths) is not what goes there
    made = subprocess.run([TOOLCHAIN, "rtmaps", "--artifact", str(artifact)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    third = subprocess.run(command, capture_output=True, text=True)
    assert third.returncode == 0, third.stderr
    assert f"the artifact's own {artifact / DEFAULT_FOLDER} opens this machine's paths and is not sent" in third.stderr
    assert "0 file(s) sent, 3 unchanged" in third.stderr
    assert f'"default_model_path": "{remote_dir}/model.int8.onnx"' in (folder / COMPONENT_NAME).read_text()


@pytest.mark.sshd
def test_a_connection_dropped_during_deploy_rtmaps_leaves_no_half_written_component(
        loopback_sshd: LoopbackSSHD, tmp_path: Path, artifact: Path) -> None:
    direct = loopback_sshd.profile(tmp_path)
    first = deploy(direct, artifact)  # the models are there: what the proxied runs send is mostly the component
    expected = expected_hashes(artifact, first.remote_dir)
    known_hosts = tmp_path / "proxied_known_hosts"
    dropped = 0
    for drop_after in (20_000, 35_000, 50_000, 65_000, 80_000):
        proxy = FlakyProxy(loopback_sshd.port, drop_after=drop_after)
        try:
            known_hosts.write_text(f"[{LOOPBACK}]:{proxy.port} {loopback_sshd.host_key_line}\n")
            profile = loopback_sshd.profile(tmp_path, port=proxy.port, known_hosts=known_hosts)
            try:
                deploy(profile, artifact, rtmaps=True)
            except ConnectionDroppedError:
                dropped += 1
                assert proxy.dropped.is_set()
            folder = Path(direct.workdir) / artifact.name / "rtmaps"
            present = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
            assert set(present) <= set(COMPONENT_FILES), present  # no upload leftovers
            # whatever is in place arrived whole (the component last: only with its golden vectors)
            assert COMPONENT_NAME not in present or GOLDEN_NAME in present
            assert {name: sha256_file(folder / name) for name in present} == {name: expected[name] for name in present}
        finally:
            proxy.close()
    assert dropped >= 1
    report = deploy(direct, artifact, rtmaps=True)
    check_deployed(report, artifact)
    assert not any(path.name.startswith(UPLOAD_PREFIX) for path in remote_component(report).iterdir())


@pytest.fixture(scope="module")
def rtmaps_bluebox() -> Iterator[EmulatedBluebox]:
    emulation_prerequisites()
    instance = EmulatedBluebox(EMULATED_INSTANCE, EMULATED_SUBNET)
    try:
        instance.up(fresh=True)
        yield instance
    finally:
        instance.purge()


@pytest.mark.emulated
@pytest.mark.slow
def test_the_component_runs_its_lifecycle_on_the_emulated_bluebox_and_gives_the_artifacts_answers(
        rtmaps_bluebox: EmulatedBluebox, artifact: Path) -> None:
    # the Bluebox's runtime pin: onnxruntime 1.16.3 + numpy 1.26.4 (provisioned from the host, no internet there)
    profile = rtmaps_bluebox.apply_to(load_profile("emulated")).with_overrides(onnxruntime="1.16.3", numpy="1.26.4")
    report = deploy(profile, artifact, rtmaps=True)
    check_deployed(report, artifact, rtmaps_bluebox.rootfs)
    ties = read_manifest(artifact).accuracy.ties
    golden = read_golden(remote_component(report, rtmaps_bluebox.rootfs) / GOLDEN_NAME)
    document = run_on_target(profile, report, {"threads": "1"})
    # another CPU's kernels (aarch64 under qemu): the top-1 is the artifact's, the logits agree closely
    spread = float(np.ptp(golden["scores_int8"]))
    outputs = check_golden(document, golden, "int8", ties.get("int8", {}), atol=0.05 * spread)
    assert any("(int8)" in text for _, text in document["reports"])
    assert outputs["inference_ms"][1].min() > 0
