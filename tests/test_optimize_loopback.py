"""`toolchain optimize` against a real OpenSSH server on 127.0.0.1: real latency of every candidate, measured by the
benchmark agent there, decides.

Two candidates built to differ (the artifact's INT8 file, and the same file with ~20 M extra multiply-adds whose
result is multiplied by zero: same answers, slower) must be ranked by their latency, and with every INT8 candidate
slowed FP32 must win. The full flow (four flavours, mixed variants from the per-node profile, the chosen
artifact deployed and used by `toolchain bench`) runs through the command line.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.deploy import DeployArtifacts, artifact_copy
from tests.fixtures.sshd import LoopbackSSHD
from toolchain.artifacts import ArtifactStore, load_artifact, read_manifest
from toolchain.hashing import sha256_file
from toolchain.optimize.candidates import FP32, Candidate, artifact_candidate
from toolchain.optimize.decide import CHOSEN, FAILED, LOST, NOT_MEASURED
from toolchain.optimize.run import OptimizeSettings, optimize
from toolchain.optimize.targets import target_key

pytestmark = [pytest.mark.sshd, pytest.mark.slow]
TOOLCHAIN = str(Path(sys.executable).with_name("toolchain"))
QUICK = dict(rounds=2, runs=30, warmup=3)


def slowed(source: Candidate, folder: Path, products: int) -> Candidate:
    """The candidate's model with `products` chained 1024 x 1024 matrix products of the input added to its logits
    times zero: the same answers, `products` million more multiply-adds per image."""
    import onnx
    from onnx import helper, numpy_helper

    assert source.path is not None
    model = onnx.load(str(source.path))
    graph = model.graph
    logits = graph.output[0].name
    for node in graph.node:
        node.output[:] = [f"{logits}_before" if name == logits else name for name in node.output]
    weight = np.random.RandomState(0).uniform(-1, 1, (1024, 1024)).astype(np.float32) / 32
    graph.initializer.extend([numpy_helper.from_array(weight, "slow_w"),
                              numpy_helper.from_array(np.array([1], dtype=np.int64), "slow_axes"),
                              numpy_helper.from_array(np.array(0.0, dtype=np.float32), "slow_zero")])
    nodes = [helper.make_node("Flatten", [graph.input[0].name], ["slow_0"], axis=1, name="slow_flatten")]
    for index in range(products):
        nodes.append(helper.make_node("MatMul", [f"slow_{index}", "slow_w"], [f"slow_{index + 1}"],
                                      name=f"slow_matmul_{index}"))
    nodes += [helper.make_node("ReduceSum", [f"slow_{products}", "slow_axes"], ["slow_sum"], keepdims=1,
                               name="slow_sum"),
              helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"], name="slow_times_zero"),
              helper.make_node("Add", [f"{logits}_before", "slow_nothing"], [logits], name="slow_add")]
    graph.node.extend(nodes)
    path = folder / f"{source.name}-slowed-{products}.onnx"
    onnx.save(model, str(path))
    return dataclasses.replace(source, name=f"{source.name}-slowed-{products}", path=path, reused=False,
                               sha256=sha256_file(path))


@pytest.fixture
def artifact(deploy_artifacts: DeployArtifacts, tmp_path: Path) -> Path:
    return artifact_copy(deploy_artifacts.loadable_by_1_16, tmp_path / "artifacts")


def entries(log: dict) -> dict[str, dict]:
    return {entry["candidate"]: entry for entry in log["candidates"]}


def test_optimize_picks_the_faster_of_two_candidates_built_to_differ(loopback_sshd: LoopbackSSHD, tmp_path: Path,
                                                                     artifact: Path) -> None:
    profile = loopback_sshd.profile(tmp_path)
    own = artifact_candidate(load_artifact(artifact))
    slow = slowed(own, tmp_path, 20)
    result = optimize(profile, artifact, ArtifactStore(artifact.parents[1]),
                      OptimizeSettings(flavours=(("qoperator", "uint8"),), mixed=False, **QUICK), extra=[slow])
    found = entries(result.log)
    fast, slower = found[own.name]["target"], found[slow.name]["target"]
    assert fast["top1"] == slower["top1"] and fast["passed"] and slower["passed"]  # the same answers
    assert slower["p50_ms"] > fast["p50_ms"] + 0.5 and len(slower["p50_ms_rounds"]) == 2
    assert found[slow.name]["verdict"] == LOST and found[slow.name]["why"].startswith("slower than ")
    passing = {name: entry["target"]["p50_ms"] for name, entry in found.items() if entry["verdict"] in (CHOSEN, LOST)}
    assert result.decision.winner == min(passing, key=passing.get) != slow.name
    assert found[result.decision.winner]["verdict"] == CHOSEN
    assert result.log["emulated"] is False and "note" not in result.log


def test_optimize_picks_fp32_when_every_int8_candidate_is_slower_and_bench_uses_it(
        loopback_sshd: LoopbackSSHD, tmp_path: Path, artifact: Path) -> None:
    from toolchain.providers import resolve_profile

    target = loopback_sshd.profile_file(tmp_path, "lab", loopback_sshd.known_hosts(tmp_path), platform.machine())
    profile = resolve_profile(str(target))
    own = artifact_candidate(load_artifact(artifact))
    store = ArtifactStore(artifact.parents[1])
    result = optimize(profile, artifact, store, OptimizeSettings(flavours=(), mixed=False, **QUICK),
                      extra=[slowed(own, tmp_path, 12), slowed(own, tmp_path, 24)])
    assert (result.decision.winner, result.decision.variant) == (FP32, "fp32")
    found = entries(result.log)
    assert all(entry["verdict"] == LOST and entry["why"].startswith("slower than fp32")
               for name, entry in found.items() if name != FP32)
    # the choice is an artifact of its own, recorded as this target's, deployed there
    manifest = read_manifest(result.folder)
    assert manifest.optimize["variant"] == "fp32" and manifest.optimize["base_artifact"] == artifact.name
    assert manifest.optimize["candidates"] == result.log["candidates"]
    assert store.latest(manifest.model, target_key(profile)) == result.folder
    assert store.latest(manifest.model) == artifact  # for any other target: the export
    assert (Path(profile.workdir) / result.folder.name / "deploy.json").is_file()
    assert json.loads(result.log_path.read_text()) == result.log
    bench = subprocess.run([TOOLCHAIN, "bench", "--model", manifest.model, "--artifacts", str(store.root), "--target",
                            str(target), "--runs", "5", "--warmup", "1", "--json"], capture_output=True, text=True)
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)["artifact"]["artifact_id"] == result.folder.name
    assert "the artifact `toolchain optimize` chose for lab" in bench.stderr
    report = subprocess.run([TOOLCHAIN, "report", "--artifacts", str(store.root), "--output", str(tmp_path / "report")],
                            capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report" / "report.html").read_text()
    assert 'data-table="optimize"' in page and "slower than fp32" in page


def test_optimize_through_the_command_line_measures_every_flavour_and_the_mixed_variants(
        loopback_sshd: LoopbackSSHD, tmp_path: Path, artifact: Path) -> None:
    target = loopback_sshd.profile_file(tmp_path, "lab", loopback_sshd.known_hosts(tmp_path), platform.machine())
    outcome = subprocess.run([TOOLCHAIN, "optimize", "--artifact", str(artifact), "--artifacts", str(artifact.parents[1]),
                              "--target", str(target), "--rounds", "1", "--runs", "20", "--warmup", "2", "--json"],
                             capture_output=True, text=True)
    assert outcome.returncode == 0, outcome.stderr
    log = json.loads(outcome.stdout)
    found = entries(log)
    assert {FP32, "int8-qoperator-u8s8", "int8-qoperator-s8s8", "int8-qdq-u8s8", "int8-qdq-s8s8"} <= set(found)
    assert found["int8-qoperator-u8s8"]["reused_artifact_int8"] is True
    assert all(entry["verdict"] in (CHOSEN, LOST, FAILED, NOT_MEASURED) and entry["why"] for entry in found.values())
    assert [entry["verdict"] for entry in found.values()].count(CHOSEN) == 1
    # each flavour's per-node profile on the target either proposed a mixed variant or says why not
    plans = log["latency_plans"]
    assert set(plans) == {name for name, entry in found.items() if entry["kind"] == "int8" and "target" in entry}
    for name, plan in plans.items():
        mixed = name.replace("int8-", "mixed-")
        assert (mixed not in found) if plan.get("why_none") else (mixed in found and plan["kept_for_latency"]), plan
        assert all(unit["gain_ms"] > 0 and unit["int8_ms"] > unit["fp32_ms"] for unit in plan["kept_for_latency"])
    for entry in found.values():
        if entry["kind"] == "mixed":
            assert entry["kept_for_latency"] and entry["flavour"]
    chosen = read_manifest(Path(log["artifact"]))
    assert chosen.optimize["chosen"] == log["chosen"] and chosen.optimize["target"]["profile"] == "lab"
    table = subprocess.run([TOOLCHAIN, "deploy", "--model", chosen.model, "--artifacts", str(artifact.parents[1]),
                            "--target", str(target), "--json"], capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    assert json.loads(table.stdout)["artifact_id"] == chosen.artifact_id and json.loads(table.stdout)["bytes_sent"] == 0


def test_profile_on_the_host_and_on_a_target_over_ssh(loopback_sshd: LoopbackSSHD, tmp_path: Path,
                                                      artifact: Path) -> None:
    target = loopback_sshd.profile_file(tmp_path, "lab", loopback_sshd.known_hosts(tmp_path), platform.machine())
    command = [TOOLCHAIN, "profile", "--artifact", str(artifact), "--target", str(target), "--runs", "10", "--json"]
    refused = subprocess.run(command, capture_output=True, text=True)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and len(lines) == 2 and "not (completely) deployed" in lines[0]
    subprocess.run([TOOLCHAIN, "deploy", "--artifact", str(artifact), "--target", str(target)], check=True,
                   capture_output=True)
    outcome = subprocess.run(command, capture_output=True, text=True)
    assert outcome.returncode == 0, outcome.stderr
    local, remote = json.loads(outcome.stdout)["places"]
    assert (local["place"]["name"], remote["place"]["name"]) == ("local", "lab")
    assert remote["place"]["address"].startswith("root@127.0.0.1:") and remote["settings"]["runs"] == 10
    for place in (local, remote):
        assert place["ceilings"]["peak"]["source"] == "measured" and place["ceilings"]["bandwidth"]
        for record in place["variants"].values():
            assert record["coverage"]["unattributed"] == 0 and record["coverage"]["none"] == 0
        assert Path(place["roofline_svg"]).is_file()
