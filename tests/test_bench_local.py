"""`toolchain bench --target local`: the agent in a local subprocess, FP32 and INT8 side by side,
labeled with what was measured, checked against schema toolchain.bench/1 and stored beside the manifest."""

from __future__ import annotations

import copy
import json
import shutil
import socket

import pytest

from tests.fixtures.data import assert_clear_error
from tests.test_cli_train import assert_one_line_error, toolchain  # noqa: F401  (fixture)
from toolchain.bench.results import validate_result
from toolchain.bench.settings import QUICK_LATENCY, BenchSettings, parse_threads
from toolchain.bench.system import agent_command, bench_local, measure_files
from toolchain.errors import BenchmarkError, UsageError

FAST = ("--threads", "1", "--warmup", "2", "--runs", "10")


def test_bench_local_json_is_a_checked_result_stored_beside_the_manifest(toolchain, artifact_copy):  # noqa: F811
    outcome = toolchain("bench", "--artifact", artifact_copy, *FAST, "--json")
    assert outcome.code == 0, outcome.stderr
    document = json.loads(outcome.stdout)
    stored = artifact_copy / "bench" / document["stored"].rsplit("/", 1)[-1]
    assert stored.is_file() and stored.name.startswith("local-") and stored.suffix == ".json"
    validate_result(json.loads(stored.read_text()))
    assert document["target"]["hostname"] == socket.gethostname() and document["target"]["emulated"] is False
    assert [entry["variant"] for entry in document["results"]] == ["fp32", "int8"]
    assert document["artifact"]["artifact_id"] == artifact_copy.name
    assert {item["agreement_pct"] for item in document["agreement"]} == {100.0}


def test_bench_table_names_the_cpu_and_threads_and_says_how_int8_compares(toolchain, artifact_copy):  # noqa: F811
    store = artifact_copy.parent.parent
    outcome = toolchain("bench", "--model", "hps-06-0.5x", "--artifacts", store, "--threads", "1,2", "--warmup", "2",
                        "--runs", "10")
    assert outcome.code == 0, outcome.stderr
    title, header, *rows = outcome.stdout.strip().splitlines()
    assert title.startswith(f"measured on {socket.gethostname()}: ") and "cores" in title and "onnxruntime" in title
    assert header.split()[:4] == ["variant", "threads", "batch", "p50"]
    assert [row.split()[:2] for row in rows] == [["fp32", "1"], ["fp32", "2"], ["int8", "1"], ["int8", "2"]]
    assert "int8 is " in outcome.stderr and "than fp32 at 1 thread(s)" in outcome.stderr


def test_bench_without_an_artifact_says_how_to_make_one(toolchain, tmp_path):  # noqa: F811
    outcome = toolchain("bench", "--model", "hps-06-0.5x", "--artifacts", tmp_path)
    assert_one_line_error(outcome, 1, "no artifact of hps-06-0.5x")


def test_bench_refuses_bad_thread_counts(toolchain, artifact_copy):  # noqa: F811
    outcome = toolchain("bench", "--artifact", artifact_copy, "--threads", "0,x")
    assert_one_line_error(outcome, 2, "--threads")


def test_a_failing_agent_stores_nothing(artifact_copy):
    (artifact_copy / "evalset.npz").write_bytes(b"not an npz")
    with pytest.raises(BenchmarkError) as raised:
        bench_local(artifact_copy, BenchSettings(threads=(1,), warmup=0, runs=2))
    assert_clear_error(raised.value, "the benchmark agent failed", "evalset.npz")
    assert not (artifact_copy / "bench").exists()


@pytest.fixture(scope="module")
def result(hps_artifact, tmp_path_factory) -> dict:
    """One real agent result to tamper with."""
    folder = tmp_path_factory.mktemp("bench") / "artifacts" / "hps-06-0.5x" / hps_artifact.folder.name
    shutil.copytree(hps_artifact.folder, folder)
    return bench_local(folder, BenchSettings(threads=(1,), warmup=0, runs=5)).document


TAMPERED = {
    "other schema": (lambda doc: doc.update(schema="toolchain.bench/0"), "schema 'toolchain.bench/0'"),
    "no results": (lambda doc: doc.update(results=[]), "no measurements"),
    "percentiles out of order": (lambda doc: doc["results"][0]["latency_ms"].update(p50=1e9), "out of order"),
    "predictions missing": (lambda doc: doc["results"][0].update(predictions=[1, 2]), "2 predictions for 500"),
    "target fact missing": (lambda doc: doc["target"].pop("cpu_model"), "target.cpu_model"),
    "emulated not a flag": (lambda doc: doc["target"].update(emulated="no"), "target.emulated"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_validate_result_refuses_documents_off_the_schema(case, result):
    change, fragment = TAMPERED[case]
    document = copy.deepcopy(result)
    change(document)
    with pytest.raises(BenchmarkError) as raised:
        validate_result(document)
    assert_clear_error(raised.value, fragment)


def test_agent_command_for_an_artifact_on_a_target():
    command = agent_command("/usr/bin/python3", "/work/abc/bench_agent.py", "/work/abc",
                            BenchSettings(threads=(1, 2, 4), batch=2, warmup=5, runs=50, min_time_s=1.5),
                            "/work/abc/result.json", emulated=True)
    assert command == ["/usr/bin/python3", "/work/abc/bench_agent.py", "--model", "fp32=/work/abc/model.fp32.onnx",
                       "--model", "int8=/work/abc/model.int8.onnx", "--evalset", "/work/abc/evalset.npz",
                       "--threads", "1,2,4", "--batch", "2", "--warmup", "5", "--runs", "50", "--min-time", "1.5",
                       "--output", "/work/abc/result.json", "--progress", "--emulated"]


@pytest.mark.parametrize("text", ["", "0", "1,-2", "two"])
def test_thread_lists_must_be_positive_integers(text):
    with pytest.raises(UsageError):
        parse_threads(text)


def test_measure_files_times_model_files_here_with_the_agent_and_stores_nothing(hps_artifact, tmp_path):
    models = {"fp32": hps_artifact.folder / "model.fp32.onnx", "int8": hps_artifact.folder / "model.int8.onnx"}
    events: list[dict] = []
    document = measure_files(models, hps_artifact.folder / "evalset.npz",
                             BenchSettings(threads=(1,), warmup=1, runs=5), on_progress=events.append)
    assert [(entry["variant"], entry["threads"], entry["runs"]) for entry in document["results"]] == \
        [("fp32", 1, 5), ("int8", 1, 5)]
    assert document["target"]["emulated"] is False and events
    assert QUICK_LATENCY == BenchSettings(threads=(1,), batch=1, warmup=20, runs=200)
    assert not (hps_artifact.folder / "bench").exists()
