"""The pass runner: a pass registered from outside the package runs, caches and appears in the lineage,
with no change to the runner; cache keys follow the inputs, not the outputs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from toolchain.errors import UsageError
from toolchain.graph.model import add_metadata
from toolchain.pipeline import EXPORT_PASSES, ExportRequest, run_export
from toolchain.pipeline.config import QuantSettings
from toolchain.pipeline.passes import ModelRecord, Pass, create_pass, register_pass
from toolchain.pipeline.runner import chain_keys

SMALL_EVAL = 200
RUNS: list[str] = []


@register_pass
class StampPass(Pass):
    """A toy pass: copies the float model and stamps a metadata entry into it."""

    name = "test-stamp"
    checks_parity = True

    def run(self, record: ModelRecord, context, folder: Path) -> ModelRecord:
        RUNS.append(context.artifact_id)
        path = folder / "stamped.onnx"
        path.write_bytes(record.fp32.read_bytes())
        add_metadata(path, {"test.stamp": "yes"})
        return replace(record, fp32=path).with_notes(nodes={"stamped": True})


def _with_stamp() -> tuple[str, ...]:
    position = EXPORT_PASSES.index("batchnorm") + 1
    return (*EXPORT_PASSES[:position], "test-stamp", *EXPORT_PASSES[position:])


@pytest.fixture
def own_pass_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A pass cache of this test's own (the session's may hold passes of the same checkpoint)."""
    folder = tmp_path / "pass-cache"
    monkeypatch.setenv("TOOLCHAIN_PASS_CACHE", str(folder))
    return folder


def test_a_registered_pass_runs_caches_and_appears_in_the_lineage(tiny_hps_checkpoint, tmp_path, own_pass_cache):
    RUNS.clear()
    request = ExportRequest(model="hps-06-0.25x", checkpoint=tiny_hps_checkpoint, artifacts=tmp_path,
                            eval_count=SMALL_EVAL, quant=QuantSettings(max_drop=100.0), passes=_with_stamp())
    made = run_export(request)
    document = made.manifest.to_json()
    assert [entry["pass"] for entry in document["lineage"]] == list(_with_stamp())
    assert not any(entry["cached"] for entry in document["lineage"])
    stamp = next(entry for entry in document["lineage"] if entry["pass"] == "test-stamp")
    assert stamp["parity_max_abs"] <= 1e-4  # the runner checked parity after the pass
    assert document["parity"]["test-stamp_max_abs"] == stamp["parity_max_abs"]
    assert document["nodes"]["stamped"] is True
    metadata = {entry.key: entry.value for entry in onnx.load(str(made.folder / "model.fp32.onnx")).metadata_props}
    assert metadata["test.stamp"] == "yes"
    assert len(RUNS) == 1 and len(list(own_pass_cache.iterdir())) == len(_with_stamp()) - 1
    # the same request: the whole artifact is cached, no pass runs
    assert run_export(request).cached and len(RUNS) == 1
    # another gate: every pass up to the gate (the toy one included) comes from the pass cache
    regated = run_export(replace(request, quant=QuantSettings(max_drop=50.0)))
    assert not regated.cached and len(RUNS) == 1
    cached = {entry["pass"]: entry["cached"] for entry in regated.manifest.to_json()["lineage"]}
    assert cached == {"export": True, "simplify": True, "batchnorm": True, "test-stamp": True, "quantize": True,
                      "gate": False, "package": False}
    assert regated.manifest.artifact_id != made.manifest.artifact_id


def test_without_the_pass_the_plan_and_the_artifact_differ(tiny_hps_checkpoint, tmp_path):
    request = ExportRequest(model="hps-06-0.25x", checkpoint=tiny_hps_checkpoint, artifacts=tmp_path,
                            eval_count=SMALL_EVAL, quant=QuantSettings(max_drop=100.0))
    plain = run_export(request)
    stamped = run_export(replace(request, passes=_with_stamp()))
    assert plain.folder != stamped.folder
    assert "test-stamp" not in [entry["pass"] for entry in plain.manifest.to_json()["lineage"]]


def test_cache_keys_chain_each_pass_after_the_inputs():
    quant = QuantSettings()
    passes = [create_pass("simplify"), create_pass("quantize", quant), create_pass("gate", quant)]
    keys = chain_keys({"source": "a"}, passes)
    assert len(set(keys)) == 3
    assert chain_keys({"source": "a"}, passes) == keys
    assert chain_keys({"source": "b"}, passes)[0] != keys[0]
    regated = [passes[0], passes[1], create_pass("gate", replace(quant, max_drop=0.5))]
    assert chain_keys({"source": "a"}, regated)[:2] == keys[:2] and chain_keys({"source": "a"}, regated)[2] != keys[2]


def test_an_unknown_pass_name_is_a_usage_error_with_the_closest_names():
    with pytest.raises(UsageError) as raised:
        create_pass("quantise")
    assert "quantize" in (raised.value.hint or "")
