"""The benchmark agent: a Python 3.5 script of the target-side package that times an artifact's models, the
same on host and target, and speaks a line protocol (PROGRESS / ERROR) and a versioned JSON schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.fixtures.agent import agent_module
from toolchain.bench.results import agreement, host_predictions, validate_result
from toolchain.bench.settings import BenchSettings
from toolchain.bench.system import agent_command
from toolchain.hashing import sha256_file
from toolchain.remote.agent_package import AGENT_DIR, BENCH_AGENT, SHIPPED

AGENT_PATH = AGENT_DIR / BENCH_AGENT

QUICK = BenchSettings(threads=(1, 2), batch=1, warmup=3, runs=20)


def run_agent(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_agent_is_python_3_5_compatible():
    vermin = Path(sys.executable).parent / "vermin"
    checked = subprocess.run([str(vermin), "-t=3.5-", "--no-tips", "--violations", str(AGENT_PATH)],
                             capture_output=True, text=True, cwd=REPO)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_agent_imports_nothing_from_the_package():
    source = AGENT_PATH.read_text()
    assert "toolchain" not in "".join(line for line in source.splitlines() if line.startswith(("import", "from")))


def test_agent_measures_every_model_and_thread_count(hps_artifact, tmp_path):
    folder = hps_artifact.folder
    output = tmp_path / "result.json"
    done = run_agent(agent_command(sys.executable, AGENT_PATH, folder, QUICK, output, emulated=True))
    assert done.returncode == 0, done.stderr
    document = validate_result(json.loads(output.read_text()))
    assert document["target"]["emulated"] is True  # the label the caller asked for
    assert document["target"]["arch"] and document["target"]["cores"] >= 1
    assert document["settings"]["evalset"] == {"file": "evalset.npz", "sha256": sha256_file(folder / "evalset.npz"),
                                               "count": 500}
    measured = [(entry["variant"], entry["threads"]) for entry in document["results"]]
    assert measured == [("fp32", 1), ("fp32", 2), ("int8", 1), ("int8", 2)]
    for entry in document["results"]:
        assert entry["runs"] == 20 and entry["batch"] == 1
        assert entry["model_sha256"] == hps_artifact.manifest.to_json()["files"][entry["model_file"]]["sha256"]
        assert entry["providers"] == ["CPUExecutionProvider"]
        assert entry["peak_rss_mb"] > entry["rss_before_session_mb"] > 0
        assert entry["throughput_ips"] == pytest.approx(20 / entry["timed_s"])
        top1 = hps_artifact.manifest.to_json()["accuracy"][entry["variant"]]["top1"]
        assert entry["accuracy"] == {"top1": pytest.approx(top1), "count": 500}
    # the agent's answers are the host's answers (same runtime here): 100 % agreement
    assert {item.agreement_pct for item in agreement(document, host_predictions(folder))} == {100.0}
    progress = [json.loads(line[len("PROGRESS "):]) for line in done.stderr.splitlines()
                if line.startswith("PROGRESS ")]
    assert {event["phase"] for event in progress} == {"warmup", "timing", "accuracy"}
    assert {"variant", "threads", "phase", "done", "total"} <= set(progress[0])
    assert all(line.startswith("PROGRESS ") for line in done.stderr.splitlines())


def test_agent_keeps_timing_until_the_minimum_time(hps_artifact, tmp_path):
    output = tmp_path / "result.json"
    settings = BenchSettings(threads=(1,), warmup=0, runs=5, min_time_s=0.2)
    done = run_agent(agent_command(sys.executable, AGENT_PATH, {"fp32": hps_artifact.folder / "model.fp32.onnx"},
                                   settings, output, evalset=hps_artifact.folder / "evalset.npz", progress=False))
    assert done.returncode == 0, done.stderr
    entry = json.loads(output.read_text())["results"][0]
    assert entry["runs"] > 5 and entry["timed_s"] >= 0.2
    assert done.stderr == ""  # no --progress: nothing on stderr


def test_agent_times_batches_larger_than_one(hps_artifact, tmp_path):
    output = tmp_path / "result.json"
    settings = BenchSettings(threads=(1,), batch=8, warmup=1, runs=4)
    done = run_agent(agent_command(sys.executable, AGENT_PATH, {"int8": hps_artifact.folder / "model.int8.onnx"},
                                   settings, output, evalset=hps_artifact.folder / "evalset.npz"))
    assert done.returncode == 0, done.stderr
    entry = json.loads(output.read_text())["results"][0]
    assert entry["batch"] == 8 and entry["throughput_ips"] == pytest.approx(8 * 4 / entry["timed_s"])
    assert len(entry["predictions"]) == 500


def _error_of(done: subprocess.CompletedProcess) -> dict:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("ERROR "), done.stderr
    return json.loads(lines[0][len("ERROR "):])


def test_agent_reports_a_missing_model_as_one_error_line(hps_artifact, tmp_path):
    command = agent_command(sys.executable, AGENT_PATH, {"fp32": tmp_path / "absent.onnx"}, QUICK,
                            tmp_path / "result.json", evalset=hps_artifact.folder / "evalset.npz")
    error = _error_of(run_agent(command))
    assert error["type"] == "AgentError" and "absent.onnx not found" in error["message"]
    assert not (tmp_path / "result.json").exists()


def test_agent_reports_a_model_onnxruntime_cannot_load(hps_artifact, tmp_path):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"\x08\x07" + b"garbage" * 10)
    command = agent_command(sys.executable, AGENT_PATH, {"fp32": broken}, QUICK, tmp_path / "result.json",
                            evalset=hps_artifact.folder / "evalset.npz", progress=False)
    error = _error_of(run_agent(command))
    assert "onnxruntime cannot load" in error["message"] and "fp32 with 1 thread(s)" in error["message"]


def test_agent_reports_an_eval_set_that_does_not_fit(hps_artifact, tmp_path):
    np.savez(tmp_path / "evalset.npz", images=np.zeros((4, 3, 32, 32), np.float32), labels=np.zeros(4, np.int64))
    command = agent_command(sys.executable, AGENT_PATH, {"fp32": hps_artifact.folder / "model.fp32.onnx"}, QUICK,
                            tmp_path / "result.json", evalset=tmp_path / "evalset.npz")
    assert "eval images are [3, 32, 32]" in _error_of(run_agent(command))["message"]


def test_agent_names_arm_cores_from_cpuinfo(monkeypatch):
    cpuinfo = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n"
    common = agent_module("common")
    monkeypatch.setattr(common, "read_text", lambda path: cpuinfo if path == "/proc/cpuinfo" else "")
    assert common.cpu_model() == "Cortex-A72"


def test_agent_runs_from_a_copy_outside_the_package(hps_artifact, tmp_path):
    for name in SHIPPED:  # as the target gets it: the package's files in one folder, nothing around them
        shutil.copy(AGENT_DIR / name, tmp_path / name)
    copy = tmp_path / BENCH_AGENT
    output = tmp_path / "result.json"
    done = run_agent(agent_command(sys.executable, copy, {"int8": hps_artifact.folder / "model.int8.onnx"},
                                   BenchSettings(threads=(1,), warmup=0, runs=3), output,
                                   evalset=hps_artifact.folder / "evalset.npz", progress=False))
    assert done.returncode == 0, done.stderr
    assert validate_result(json.loads(output.read_text()))["results"][0]["variant"] == "int8"


def test_the_agent_removes_scratch_folders_whose_agent_is_gone_and_leaves_live_ones(hps_artifact, tmp_path):
    """An agent killed with SIGKILL (or a board that lost power) leaves its scratch folder in the target's temp
    dir; the next agent removes those whose process is gone, never a live agent's, and leaves none of its own."""
    import os

    temp = tmp_path / "tmp"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = temp / f"toolchain-bench-{gone.pid}-abc123"
    live = temp / f"toolchain-bench-{os.getpid()}-def456"
    other = temp / "bench-something-else"
    for folder in (dead, live, other):
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"left behind")
    command = agent_command(sys.executable, AGENT_PATH, {"int8": hps_artifact.folder / "model.int8.onnx"},
                            BenchSettings(threads=(1,), warmup=0, runs=3), tmp_path / "result.json",
                            evalset=hps_artifact.folder / "evalset.npz", progress=False)
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(temp)})
    assert done.returncode == 0, done.stderr
    left = sorted(path.name for path in temp.iterdir() if not path.name.startswith("."))  # onnxruntime's .ses
    assert left == sorted([live.name, other.name])
