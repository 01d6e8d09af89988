"""Target tests on the emulated aarch64 Bluebox (Debian 12 arm64 under qemu-user, sshd in a netns).

The host provisions onnxruntime for aarch64 (the target has no internet and no onnxruntime), deploys
artifacts the host pipeline made, benches FP32 and INT8 on the target and checks the target's answers
against the host's; once with the newest runtime that fits, once with the Bluebox pin (onnxruntime
1.16.3 + numpy 1.26.4), and an artifact too new for that runtime is refused before upload. Timings
here are qemu's: labeled emulated.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from packaging.version import Version

from tests.fixtures.deploy import DeployArtifacts, artifact_copy
from tests.fixtures.emulated import EmulatedTarget, emulation_prerequisites
from toolchain.artifacts import read_manifest
from toolchain.bench.results import AGREEMENT_THRESHOLD_PCT, BenchRun, validate_result
from toolchain.bench.system import bench_remote
from toolchain.cli.common import show_bench
from toolchain.errors import TargetIncompatibleError
from toolchain.remote.deploy import artifact_stamp, deploy, load_artifact
from toolchain.providers.emulated import USER, EmulatedBluebox
from toolchain.remote.session import TargetSession
from toolchain.remote.target import TargetProfile, open_transport

pytestmark = [pytest.mark.emulated, pytest.mark.slow]


def on_target(target: EmulatedTarget, remote_path: str) -> Path:
    """Where a path of the emulated target lies on this machine (its root filesystem is a folder here)."""
    return target.instance.rootfs / remote_path.lstrip("/")


def snapshot(folder: Path) -> dict[str, int]:
    """Every file under `folder` with its modification time (empty when the folder does not exist)."""
    return {str(path): path.stat().st_mtime_ns for path in folder.rglob("*")} if folder.exists() else {}


def check_agreement(result: BenchRun, artifact: Path) -> None:
    """The target's answers are the host's, so its accuracy is the host's within the disagreement (an image whose
    host logits tie exactly counts as agreeing whichever tied class the target picks, and may move accuracy)."""
    assert {item.variant for item in result.agreements} == {"fp32", "int8"}
    host = read_manifest(artifact).to_json()["accuracy"]
    target = {entry["variant"]: entry["accuracy"]["top1"] for entry in result.document["results"]}
    for item in result.agreements:
        assert item.agreement_pct >= AGREEMENT_THRESHOLD_PCT, item
        allowed = 100.0 - item.agreement_pct + 100.0 * item.tied / item.count
        assert abs(target[item.variant] - host[item.variant]["top1"]) <= allowed + 1e-9, item


def test_emulated_target_reports_an_aarch64_cortex_a72_without_onnxruntime(emulated_bluebox: EmulatedTarget) -> None:
    with open_transport(emulated_bluebox.profile) as transport:
        facts = TargetSession(transport, emulated_bluebox.profile).read_facts()
    assert (facts.arch, facts.cpu_model, facts.cores) == ("aarch64", "Cortex-A72", 8)
    assert facts.python.startswith("3.11.") and facts.glibc == "2.36"
    assert facts.system_runtime.onnxruntime is None and facts.hostname == "bluebox-emulated"


def test_deploy_provisions_aarch64_onnxruntime_and_the_bench_agrees_with_the_host(
        emulated_bluebox: EmulatedTarget, deploy_artifacts: DeployArtifacts, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    profile = emulated_bluebox.profile
    artifact = artifact_copy(deploy_artifacts.too_new_for_1_16, tmp_path)
    report = deploy(profile, artifact)
    runtime = report.runtime
    assert runtime is not None and runtime.source == "provisioned now"
    assert Version(runtime.onnxruntime) >= Version("1.20") and all("aarch64" in name for name in runtime.wheels)
    assert on_target(emulated_bluebox, f"{runtime.pythonpath}/onnxruntime/__init__.py").is_file()
    assert report.emulated and report.bytes_sent > 0

    result = bench_remote(profile, artifact)
    stored = validate_result(json.loads(result.path.read_text()))
    assert stored["target"]["emulated"] is True and stored["remote"]["emulated"] is True
    assert stored["target"]["arch"] == "aarch64" and stored["target"]["onnxruntime"] == runtime.onnxruntime
    check_agreement(result, artifact)
    show_bench(result)
    assert "EMULATED" in capsys.readouterr().out

    assert deploy(profile, artifact).bytes_sent == 0


def test_the_bluebox_runtime_pin_onnxruntime_1_16_3_with_numpy_1_26_4_runs_an_artifact_it_loads(
        emulated_bluebox: EmulatedTarget, deploy_artifacts: DeployArtifacts, tmp_path: Path) -> None:
    profile = emulated_bluebox.profile.with_overrides(onnxruntime="1.16.3", numpy="1.26.4")
    artifact = artifact_copy(deploy_artifacts.loadable_by_1_16, tmp_path)
    # the pipeline's INT8 model imports only the domains its nodes use (no com.microsoft.nchwc & co.)
    assert set(artifact_stamp(load_artifact(artifact))[1]) == {"", "com.microsoft"}
    report = deploy(profile, artifact)
    assert report.runtime is not None and (report.runtime.onnxruntime, report.runtime.numpy) == ("1.16.3", "1.26.4")
    assert report.checks[-1].status == "ok" and report.checks[-1].value == "opset 17, IR 8"
    result = bench_remote(profile, artifact)
    assert (result.document["target"]["onnxruntime"], result.document["target"]["numpy"]) == ("1.16.3", "1.26.4")
    check_agreement(result, artifact)


def test_an_artifact_too_new_for_the_targets_runtime_is_refused_before_upload(
        emulated_bluebox: EmulatedTarget, deploy_artifacts: DeployArtifacts, tmp_path: Path) -> None:
    profile: TargetProfile = emulated_bluebox.profile.with_overrides(onnxruntime="1.16.3", numpy="1.26.4")
    artifact = artifact_copy(deploy_artifacts.too_new_for_1_16, tmp_path)
    remote = on_target(emulated_bluebox, f"{profile.workdir}/{artifact.name}")
    before = snapshot(remote)  # the newest runtime may have received this artifact in an earlier test
    with pytest.raises(TargetIncompatibleError) as caught:
        deploy(profile, artifact)
    assert "opset 18, IR 10" in caught.value.message and "onnxruntime 1.16.3 cannot load it" in caught.value.message
    assert "IR version" in caught.value.message
    # opset 18 itself is fine for 1.16.3: the torchscript exporter writes it with IR 8
    assert caught.value.hint == (f"export for this runtime: toolchain export --model {artifact.parent.name} "
                                 "--opset 18 --exporter torchscript")
    assert snapshot(remote) == before


def alive(pid: int | None) -> bool:
    """True while `pid` runs (a zombie waiting for its parent does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_an_instance_stops_by_pid_and_a_killed_runs_leftovers_are_cleared(tmp_path: Path) -> None:
    emulation_prerequisites()
    first = EmulatedBluebox("pytestb", "10.200.8")
    try:
        first.up()
        assert first.running() and Path("/run/netns/tc-pytestb").exists()
        pid = first.status().pid
        # a run killed without cleaning up: a new object with the same names must take over
        again = EmulatedBluebox("pytestb", "10.200.8")
        again.up()
        assert again.running() and again.status().pid != pid and not alive(pid)
        assert again.down() is True
        assert not again.running() and not Path("/run/netns/tc-pytestb").exists()
        assert not Path("/sys/class/net/tc-pytestb-h").exists()
        assert again.down() is False
    finally:
        first.purge()
    assert f"{USER}@10.200.8.2" == first.status().address
