"""deploy and remote bench against a real OpenSSH server on 127.0.0.1 (the target is this machine).

The integration path on artifacts the host pipeline made (deploy, unchanged redeploy, bench, fetch,
lock, `toolchain target bench` making a missing artifact first) and the faults: each fault ends in
one typed error, and nothing half-written stays on either side.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from tests.fixtures.deploy import DeployArtifacts, artifact_copy
from tests.fixtures.sshd import LOOPBACK, FlakyProxy, LoopbackSSHD
from toolchain.artifacts import BENCH_DIR
from toolchain.bench.results import validate_result
from toolchain.bench.settings import BenchSettings
from toolchain.bench.summary import SUMMARY_SCHEMA
from toolchain.bench.system import bench_local, bench_remote
from toolchain.errors import (ArtifactError, BenchmarkError, ConnectionDroppedError, DeployError, LockHeldError,
                              ProvisioningError, TargetIncompatibleError)
from toolchain.remote.agent_package import BENCH_AGENT, UPLOAD_PREFIX
from toolchain.remote.deploy import RECEIPT, deploy
from toolchain.remote.provision import WheelIndex
from toolchain.remote.session import TargetSession
from toolchain.remote.target import TargetProfile, open_transport

pytestmark = pytest.mark.sshd

# the agent is not among them: it is installed once per version in <workdir>/.toolchain (agent_dir)
SHIPPED = {"model.fp32.onnx", "model.int8.onnx", "evalset.npz", "manifest.json", RECEIPT}
TOOLCHAIN = str(Path(sys.executable).with_name("toolchain"))


def remote_files(profile: TargetProfile, artifact: Path) -> set[str]:
    folder = Path(profile.workdir) / artifact.name
    return {path.name for path in folder.iterdir()} if folder.is_dir() else set()


@pytest.fixture
def artifact(deploy_artifacts: DeployArtifacts, tmp_path: Path) -> Path:
    """A private copy of the artifact the target's runtime (onnxruntime of this venv) loads."""
    return artifact_copy(deploy_artifacts.loadable_by_1_16, tmp_path / "artifacts")


@pytest.fixture
def profile(loopback_sshd: LoopbackSSHD, tmp_path: Path) -> TargetProfile:
    return loopback_sshd.profile(tmp_path)


def test_deploy_places_verified_files_and_an_unchanged_redeploy_sends_nothing(profile: TargetProfile,
                                                                              artifact: Path) -> None:
    first = deploy(profile, artifact)
    assert first.bytes_sent > 0 and set(first.upload.sent) == SHIPPED
    assert remote_files(profile, artifact) == SHIPPED
    for name in ("model.fp32.onnx", "model.int8.onnx", "evalset.npz", "manifest.json"):
        assert (Path(first.remote_dir) / name).read_bytes() == (artifact / name).read_bytes()
    assert first.runtime is not None and first.runtime.source == "system"
    assert [check.name for check in first.checks][-2:] == ["runtime", "opset"]
    again = deploy(profile, artifact)
    assert again.bytes_sent == 0 and again.upload.sent == [] and set(again.upload.unchanged) == SHIPPED


def test_deploy_refuses_an_artifact_edited_after_it_was_made(profile: TargetProfile, artifact: Path) -> None:
    with open(artifact / "model.int8.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="changed since the artifact was made"):
        deploy(profile, artifact)
    assert not Path(profile.workdir).exists()


def test_bench_over_ssh_stores_a_checked_result_beside_the_manifest(profile: TargetProfile, artifact: Path) -> None:
    deploy(profile, artifact)
    events: list[dict] = []
    result = bench_remote(profile, artifact, on_progress=events.append)
    assert result.path.parent == artifact / BENCH_DIR and result.path.name.startswith("loopback-")
    stored = validate_result(json.loads(result.path.read_text()))
    assert stored["target"]["emulated"] is False
    assert {entry["variant"] for entry in stored["results"]} == {"fp32", "int8"}
    assert stored["artifact"]["artifact_id"] == artifact.name and stored["remote"]["address"] == profile.address
    # same machine, same onnxruntime: the target's answers are the host's
    assert all(item.agreement_pct == 100.0 for item in result.agreements)
    assert events


def test_remote_and_local_bench_write_one_schema(profile: TargetProfile, artifact: Path) -> None:
    settings = BenchSettings(threads=(1,), warmup=1, runs=3)
    local = bench_local(artifact, settings).document
    deploy(profile, artifact)
    remote = bench_remote(profile, artifact, settings).document
    assert set(remote) == set(local) | {"remote"}
    assert set(remote["artifact"]) == set(local["artifact"]) and set(remote["settings"]) == set(local["settings"])
    assert (local["artifact"]["target"], remote["artifact"]["target"]) == ("local", "loopback")
    assert remote["agreement"] == local["agreement"]
    for document in (local, remote):
        validate_result(document)


def test_cli_bench_over_ssh_measures_both_peaks_on_the_target(loopback_sshd: LoopbackSSHD, profile: TargetProfile,
                                                              artifact: Path, tmp_path: Path) -> None:
    deploy(profile, artifact)
    target = loopback_sshd.profile_file(tmp_path, "lab", loopback_sshd.known_hosts(tmp_path), platform.machine())
    cache = tmp_path / "cache"  # nothing measured yet: both peaks run over SSH now
    command = [TOOLCHAIN, "bench", "--target", str(target), "--host", LOOPBACK, "--port", str(loopback_sshd.port),
               "--identity-file", str(loopback_sshd.client_key), "--known-hosts", str(tmp_path / "known_hosts"),
               "--artifact", str(artifact), "--threads", "1", "--warmup", "1", "--runs", "3", "--json"]
    outcome = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TOOLCHAIN_CACHE": str(cache)})
    assert outcome.returncode == 0, outcome.stderr
    document = json.loads(outcome.stdout)
    facts, compute = document["target"], document["compute"]  # facts: what the agent read on the target
    assert document["remote"]["profile"] == "lab" and f"{LOOPBACK}:{loopback_sshd.port}" in document["remote"]["address"]
    fp32, int8 = compute["peak"], compute["int8_peak"]
    assert fp32["source"] == int8["source"] == "measured" and set(fp32["fp32_gflops"]) == set(int8["int8_gops"]) == {"1"}
    for peak in (fp32, int8):
        assert f"on {facts['hostname']} ({facts['cpu_model']})" in peak["method"]
    assert f"onnxruntime {facts['onnxruntime']} MatMulInteger" in int8["method"]
    # the cache entries are keyed and labelled by the target's facts, with the target's own results in them
    entries = {path.name: json.loads(path.read_text()) for path in (cache / "peak").glob("*.json")}
    [plain] = [entry for name, entry in entries.items() if not name.endswith("-int8.json")]
    [integer] = [entry for name, entry in entries.items() if name.endswith("-int8.json")]
    assert plain["machine"] == {key: facts[key] for key in ("hostname", "arch", "cpu_model", "cores", "numpy")}
    assert integer["machine"] == {**plain["machine"], "onnxruntime": facts["onnxruntime"]}
    assert integer["runs"]["1"]["best_gops"] == int8["int8_gops"]["1"]
    assert integer["runs"]["1"]["threads"] == 1 and integer["runs"]["1"]["onnxruntime"] == facts["onnxruntime"]
    for entry in document["results"]:
        ceiling = (int8["int8_gops"] if entry["variant"] == "int8" else fp32["fp32_gflops"])["1"]
        assert entry["peak_used"] == {"dtype": entry["variant"], "source": "measured", "value": ceiling}
        assert entry["pct_of_peak"]["p50"] == pytest.approx(100 * entry["gflops"]["p50"] / ceiling)


def test_bench_refuses_an_artifact_that_is_not_deployed(profile: TargetProfile, artifact: Path) -> None:
    with pytest.raises(DeployError, match="not .*deployed"):
        bench_remote(profile, artifact)
    assert not (artifact / BENCH_DIR).exists()


def test_a_second_deploy_is_refused_while_the_target_lock_is_held(profile: TargetProfile, artifact: Path) -> None:
    with open_transport(profile) as transport:
        session = TargetSession(transport, profile)
        session.read_facts()
        with session.locked("bench of something else"):
            with pytest.raises(LockHeldError) as caught:
                deploy(profile, artifact)
            assert "bench of something else" in caught.value.message
    assert deploy(profile, artifact).bytes_sent > 0


def test_deploy_refuses_a_target_of_the_wrong_architecture(loopback_sshd: LoopbackSSHD, tmp_path: Path,
                                                           artifact: Path) -> None:
    profile = loopback_sshd.profile(tmp_path, arch="aarch64")
    seen: list = []
    with pytest.raises(TargetIncompatibleError) as caught:
        deploy(profile, artifact, on_checks=seen.append)
    assert "arch" in caught.value.message and "aarch64" in caught.value.message
    assert seen and seen[-1][0].status == "fail"
    assert not Path(profile.workdir).exists()


def test_deploy_refuses_when_the_remote_disk_is_too_small(loopback_sshd: LoopbackSSHD, tmp_path: Path,
                                                          artifact: Path, small_tmpfs: Path) -> None:
    profile = loopback_sshd.profile(tmp_path, workdir=str(small_tmpfs / "work"))
    with pytest.raises(TargetIncompatibleError) as caught:
        deploy(profile, artifact)
    assert "disk" in caught.value.message and "--clean" in (caught.value.hint or "")
    assert list(small_tmpfs.iterdir()) == []


def test_no_onnxruntime_and_no_wheel_for_the_target_is_refused_before_upload(loopback_sshd: LoopbackSSHD,
                                                                            tmp_path: Path, artifact: Path) -> None:
    bare_python = Path("/usr/bin/python3")
    require(bare_python.is_file(), "needs the system python3 (without onnxruntime)")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "onnxruntime-1.16.3-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl").write_bytes(b"")
    profile = loopback_sshd.profile(tmp_path, python=str(bare_python))
    with pytest.raises(ProvisioningError) as caught:
        deploy(profile, artifact, index=WheelIndex(wheel_dir=wheels))
    assert "no x86_64 wheels" in caught.value.message
    assert remote_files(profile, artifact) == set()


def test_paths_with_spaces_and_shell_metacharacters_deploy_and_bench(loopback_sshd: LoopbackSSHD, tmp_path: Path,
                                                                      deploy_artifacts: DeployArtifacts) -> None:
    odd = tmp_path / "it's a \"store\" $(touch pwned); `id` & more"
    artifact = artifact_copy(deploy_artifacts.loadable_by_1_16, odd)
    profile = loopback_sshd.profile(tmp_path, workdir=str(tmp_path / "work dir $(touch pwned) 'x' ;|&"))
    report = deploy(profile, artifact)
    assert remote_files(profile, artifact) == SHIPPED and report.bytes_sent > 0
    assert bench_remote(profile, artifact).path.is_file()
    assert not list(tmp_path.rglob("pwned")) and not Path("pwned").exists()


def test_connection_dropped_mid_upload_leaves_nothing_half_written(loopback_sshd: LoopbackSSHD, tmp_path: Path,
                                                                   artifact: Path) -> None:
    proxy = FlakyProxy(loopback_sshd.port, drop_after=150_000)
    try:
        known_hosts = tmp_path / "proxied_known_hosts"
        known_hosts.write_text(f"[{LOOPBACK}]:{proxy.port} {loopback_sshd.host_key_line}\n")
        profile = loopback_sshd.profile(tmp_path, port=proxy.port, known_hosts=known_hosts)
        with pytest.raises(ConnectionDroppedError):
            deploy(profile, artifact)
        assert proxy.dropped.is_set()
        left = remote_files(profile, artifact)
        assert RECEIPT not in left and not any(name.startswith(UPLOAD_PREFIX) for name in left)
        for name in left:  # whatever was committed before the drop is complete
            assert (Path(profile.workdir) / artifact.name / name).stat().st_size > 0
        assert remote_files(profile, artifact) <= SHIPPED
        deploy(profile, artifact)  # the next run (new connection) completes
        assert remote_files(profile, artifact) == SHIPPED
    finally:
        proxy.close()


def test_a_killed_agent_is_one_clear_error_and_stores_nothing(profile: TargetProfile, artifact: Path) -> None:
    report = deploy(profile, artifact)
    agent = f"{report.agent_dir}/{BENCH_AGENT}"
    killed: list[int] = []

    def kill_agent(_event: dict) -> None:
        if killed:
            return
        # the agent's Python itself, not the `timeout` process that started it
        pattern = "^" + re.escape(f"{profile.python} {agent} ")
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        for pid in map(int, found):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    with pytest.raises(BenchmarkError) as caught:
        bench_remote(profile, artifact, on_progress=kill_agent)
    assert killed and "SIGKILL" in caught.value.message
    assert not (artifact / BENCH_DIR).exists()
    assert deploy(profile, artifact).bytes_sent == 0  # the lock went with the killed run


def test_clean_removes_other_artifacts_from_the_target(profile: TargetProfile, artifact: Path,
                                                       deploy_artifacts: DeployArtifacts, tmp_path: Path) -> None:
    other = artifact_copy(deploy_artifacts.too_new_for_1_16, tmp_path / "more")
    deploy(profile, other)
    report = deploy(profile, artifact, clean=True)
    assert report.cleaned == [other.name]
    assert not (Path(profile.workdir) / other.name).exists() and remote_files(profile, artifact) == SHIPPED


def test_cli_deploy_prints_one_error_and_hint_for_an_unknown_host_key(loopback_sshd: LoopbackSSHD, tmp_path: Path,
                                                                      artifact: Path) -> None:
    target = loopback_sshd.profile_file(tmp_path, "loopback", tmp_path / "empty_known_hosts", platform.machine())
    command = [TOOLCHAIN, "deploy", "--target", str(target), "--artifact", str(artifact), "--json"]
    refused = subprocess.run(command, capture_output=True, text=True)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and refused.stdout == ""
    assert len(lines) == 2 and lines[0].startswith("error: ") and "SHA256:" in lines[0]
    assert lines[1].startswith("hint: ") and "--accept-new-host-key" in lines[1] and "toolchain deploy" in lines[1]
    accepted = subprocess.run(command + ["--accept-new-host-key"], capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["bytes_sent"] > 0


def test_cli_target_check_shows_the_preflight_and_fails_on_a_wrong_architecture(loopback_sshd: LoopbackSSHD,
                                                                                 tmp_path: Path) -> None:
    target = loopback_sshd.profile_file(tmp_path, "lab", loopback_sshd.known_hosts(tmp_path), "aarch64")
    command = [TOOLCHAIN, "target", "check", "--target", str(target)]
    wrong = subprocess.run(command + ["--json"], capture_output=True, text=True)
    checks = {item["name"]: item for item in json.loads(wrong.stdout)["checks"]}
    assert wrong.returncode == 1 and checks["arch"]["status"] == "fail" and checks["disk"]["status"] == "ok"
    assert checks["python"]["value"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")
    target.write_text(target.read_text().replace('arch = "aarch64"', f'arch = "{checks["arch"]["value"]}"'))
    table = subprocess.run(command, capture_output=True, text=True)
    assert table.returncode == 0 and "preflight: target lab" in table.stdout and "onnxruntime" in table.stdout
    assert not (tmp_path / "work").exists()


def test_target_bench_makes_a_missing_artifact_then_deploys_benches_and_stores_one_summary(
        loopback_sshd: LoopbackSSHD, tmp_path: Path, tiny_hps_checkpoint: Path) -> None:
    store = tmp_path / "artifacts"
    trained = store / "train" / "hps-06-0.25x" / "fashion-mnist" / "run"
    shutil.copytree(tiny_hps_checkpoint.parent, trained)  # what `toolchain train` leaves there
    target = loopback_sshd.profile_file(tmp_path, "lab", loopback_sshd.known_hosts(tmp_path), platform.machine())
    outcome = subprocess.run([TOOLCHAIN, "target", "bench", "hps-06-0.25x", "--target", str(target), "--artifacts",
                              str(store), "--threads", "1", "--warmup", "1", "--runs", "3", "--json"],
                             capture_output=True, text=True)
    assert outcome.returncode == 0, outcome.stderr
    assert "no artifact under" in outcome.stderr and "toolchain export --model hps-06-0.25x" in outcome.stderr
    summary = json.loads(outcome.stdout)
    stored = Path(summary.pop("stored"))
    assert stored.parent == store / "bench-remote" and stored.name.startswith("lab-")
    assert json.loads(stored.read_text()) == summary and summary["schema"] == SUMMARY_SCHEMA
    assert summary["target"]["emulated"] is False and summary["failed"] == []
    [made] = summary["models"]
    assert made["exported_now"] and made["deploy"]["bytes_sent"] > 0
    assert Path(made["folder"]).parent == store / "hps-06-0.25x"
    assert [(row["variant"], row["threads"]) for row in summary["rows"]] == [("fp32", 1), ("int8", 1)]
    assert all(row["agreement_pct"] == 100.0 and row["top1_target"] == pytest.approx(row["top1_host"])
               for row in summary["rows"])
    validate_result(json.loads(Path(made["result"]).read_text()))
