"""`toolchain export`: a trained model becomes a verified FP32 + INT8 artifact in one command.

Checks the artifact contract the deploy/remote-bench side builds on (files, manifest, evalset.npz),
the accuracy gate on a trained and on a deliberately INT8-hostile model, caching, auto-training,
and that every bad input ends in one clear error with artifacts/ left as it was.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import REPO
from tests.fixtures.data import assert_clear_error
from tests.fixtures.pipeline import BROKEN_NODE, tree
from tests.test_cli_train import assert_one_line_error, toolchain  # noqa: F401  (fixture)
from toolchain import pipeline
from toolchain.artifacts import artifact_id, read_evalset
from toolchain.errors import (AccuracyGateError, ArtifactError, CalibrationError, CheckpointError, ParityError,
                              UsageError)
from toolchain.evaluators.accuracy import onnx_logits
from toolchain.hashing import sha256_file
from toolchain.pipeline import ExportRequest, run_export
from toolchain.pipeline.config import ExportSettings, QuantSettings, u8s8_saturation_reason

SMALL_EVAL = 200


def test_trained_hps_exports_to_an_int8_artifact_within_the_gate(hps_artifact, trained_hps):
    folder, manifest = hps_artifact.folder, hps_artifact.manifest.to_json()
    assert folder.parent.name == "hps-06-0.5x" and folder.name == manifest["artifact_id"]
    assert manifest["artifact_id"] == artifact_id(manifest["hash_inputs"])
    assert sorted(path.name for path in folder.iterdir()) == [
        "evalset.npz", "manifest.json", "model.fp32.onnx", "model.int8.onnx"]
    for name, record in manifest["files"].items():
        assert sha256_file(folder / name) == record["sha256"]
        assert (folder / name).stat().st_size == record["bytes"]
    assert manifest["schema"] == "toolchain.manifest/1"
    assert manifest["input"] == {"name": "input", "shape": [None, 1, 32, 32]}
    assert manifest["output"] == {"name": "logits"}
    assert manifest["opset"] == 18
    assert manifest["inputs"]["checkpoint"]["sha256"] == sha256_file(trained_hps.checkpoint)
    assert manifest["inputs"]["calibration"]["split"] == "train"
    assert manifest["inputs"]["evalset"]["split"] == "test"
    assert {"torch", "onnx", "onnxruntime", "onnxsim"} <= set(manifest["versions"])
    assert manifest["parity"]["export_max_abs"] <= 1e-4 and manifest["parity"]["simplify_max_abs"] <= 1e-4
    # a trained model loses at most the gate's 1 pp in INT8, with nothing kept in float
    accuracy = manifest["accuracy"]
    assert accuracy["fp32"]["top1"] > 60
    assert accuracy["drop_pp"] == pytest.approx(accuracy["fp32"]["top1"] - accuracy["int8"]["top1"])
    assert accuracy["drop_pp"] <= 1.0
    assert manifest["kept_float"] == [] and not manifest["quantization"]["gate_engaged"]
    # 7-bit weights exactly where this host's U8S8 kernels saturate, with the reason recorded
    saturates = u8s8_saturation_reason()
    assert manifest["settings"]["quantization"]["reduce_range"] is (saturates is not None)
    assert manifest["hash_inputs"]["quantization"]["reduce_range"] is (saturates is not None)
    assert manifest["quantization"]["reduce_range_reason"] == saturates
    assert manifest["sizes"]["int8_bytes"] < 0.5 * manifest["sizes"]["fp32_bytes"]
    assert manifest["nodes"]["exported"] >= manifest["nodes"]["simplified"] > 0
    assert {"fp32", "int8"} <= set(manifest["latency"])


def test_models_embed_their_weights_and_carry_metadata(hps_artifact):
    folder = hps_artifact.folder
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        model = onnx.load(str(folder / name), load_external_data=False)
        assert not any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in model.graph.initializer)
    metadata = {entry.key: entry.value for entry in onnx.load(str(folder / "model.fp32.onnx")).metadata_props}
    assert metadata["toolchain.model"] == "hps-06-0.5x"
    assert metadata["toolchain.dataset"] == "fashion-mnist"
    assert json.loads(metadata["toolchain.class_names"])[0] == "T-shirt/top"
    assert metadata["toolchain.checkpoint_sha256"] == hps_artifact.manifest.to_json()["inputs"]["checkpoint"]["sha256"]
    assert len(json.loads(metadata["toolchain.mean"])) == 1


def test_evalset_holds_normalised_images_labels_and_the_host_answers(hps_artifact):
    folder = hps_artifact.folder
    data = read_evalset(folder / "evalset.npz")
    assert set(data) == {"images", "labels", "pred_fp32", "pred_int8"}
    assert data["images"].dtype == np.float32 and data["images"].shape == (500, 1, 32, 32)
    assert data["labels"].dtype == np.int64 and data["pred_fp32"].dtype == np.int64
    assert data["images"].min() < -0.5  # normalised, not raw pixels
    for variant in ("fp32", "int8"):
        answers = onnx_logits(folder / f"model.{variant}.onnx", data["images"]).argmax(axis=1)
        np.testing.assert_array_equal(answers, data[f"pred_{variant}"])
        top1 = float((data[f"pred_{variant}"] == data["labels"]).mean() * 100)
        assert top1 == pytest.approx(hps_artifact.manifest.to_json()["accuracy"][variant]["top1"])


def test_rerun_with_the_same_inputs_does_no_work(hps_artifact, trained_hps):
    folder = hps_artifact.folder
    before = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    again = run_export(ExportRequest(model="hps-06-0.5x", checkpoint=trained_hps.checkpoint,
                                     artifacts=folder.parent.parent))
    assert again.cached and again.folder == folder
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == before
    # the cached path imports neither torch nor onnx (that is what keeps it well under a second)
    probe = ("import sys; from pathlib import Path; from toolchain.pipeline import ExportRequest, run_export; "
             f"r = run_export(ExportRequest(model='hps-06-0.5x', checkpoint=Path({str(trained_hps.checkpoint)!r}), "
             f"artifacts=Path({str(folder.parent.parent)!r}))); "
             "print(r.cached, 'torch' in sys.modules, 'onnx' in sys.modules)")
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert answer.stdout.split() == ["True", "False", "False"]


def test_different_settings_make_a_different_artifact(hps_artifact, trained_hps):
    base = ExportRequest(model="hps-06-0.5x", checkpoint=trained_hps.checkpoint,
                         artifacts=hps_artifact.folder.parent.parent)
    assert pipeline.cached_export(base) is not None
    for changed in (replace(base, quant=QuantSettings(max_drop=0.5)), replace(base, export=ExportSettings(opset=17)),
                    replace(base, eval_count=100), replace(base, calibration="cifar10")):
        assert pipeline.cached_export(changed) is None


def test_gate_keeps_the_sensitive_nodes_in_float_and_records_them(broken_int8_checkpoint, tmp_path):
    result = run_export(ExportRequest(model="hps-06-0.25x", checkpoint=broken_int8_checkpoint,
                                      artifacts=tmp_path, eval_count=SMALL_EVAL))
    quantization = result.manifest.to_json()["quantization"]
    first = quantization["steps"][0]
    assert first["kept_float"] == [] and first["drop_pp"] > 10  # plain INT8 collapses
    assert quantization["gate_engaged"]
    kept = result.manifest.to_json()["kept_float"]
    assert BROKEN_NODE in kept and len(kept) <= 4
    assert result.manifest.to_json()["accuracy"]["drop_pp"] <= 1.0
    assert kept == quantization["kept_float"]
    assert quantization["sensitivity"][0]["node"] in kept
    float_convs = [node.name for node in onnx.load(str(result.folder / "model.int8.onnx")).graph.node
                   if node.op_type == "Conv"]
    assert float_convs  # the broken convolution really runs in float in the shipped model (names are compacted)


def test_gate_that_cannot_be_met_fails_with_the_numbers_and_writes_nothing(broken_int8_checkpoint, tmp_path):
    before = tree(tmp_path)
    request = ExportRequest(model="hps-06-0.25x", checkpoint=broken_int8_checkpoint, artifacts=tmp_path,
                            eval_count=SMALL_EVAL, quant=QuantSettings(max_kept_float=1))
    with pytest.raises(AccuracyGateError) as raised:
        run_export(request)
    assert_clear_error(raised.value, "--max-drop 1", "up to 1 of", "FP32")
    assert tree(tmp_path) == before


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """An artifact folder with something already in it."""
    folder = tmp_path / "artifacts"
    (folder / "other-model" / "0123456789abcdef").mkdir(parents=True)
    (folder / "other-model" / "0123456789abcdef" / "manifest.json").write_text("{}")
    return folder


def _bad_calibration(tmp_path: Path, name: str, images: np.ndarray) -> str:
    path = tmp_path / name
    np.save(path, images)
    return str(path)


BAD_EXPORTS = {
    "checkpoint for a different model": (
        lambda ckpt, tmp: dict(model="hps-06-0.5x", checkpoint=ckpt), CheckpointError, "is for hps-06-0.25x"),
    "calibration images of the wrong shape": (
        lambda ckpt, tmp: dict(checkpoint=ckpt, calibration=_bad_calibration(
            tmp, "rgb.npy", np.zeros((8, 3, 32, 32), np.float32))), CalibrationError, "[3, 32, 32]"),
    "empty calibration array": (
        lambda ckpt, tmp: dict(checkpoint=ckpt, calibration=_bad_calibration(
            tmp, "empty.npy", np.zeros((0, 1, 32, 32), np.float32))), CalibrationError, "empty"),
    "calibration definition with no images": (
        lambda ckpt, tmp: dict(checkpoint=ckpt, calibration=str(_definition(tmp, "count = 0"))),
        CalibrationError, "empty"),
    "unknown method": (
        lambda ckpt, tmp: dict(checkpoint=ckpt, quant=QuantSettings(method="kl")), UsageError, "--method 'kl'"),
    "atol exceeded": (
        lambda ckpt, tmp: dict(checkpoint=ckpt, export=ExportSettings(atol=1e-12, rtol=0.0)), ParityError,
        "max |d| = "),
}


def _definition(tmp_path: Path, count_line: str) -> Path:
    path = tmp_path / "nothing.toml"
    path.write_text(f'dataset = "fashion-mnist"\nsplit = "train"\n{count_line}\n')
    return path


@pytest.mark.parametrize("case", list(BAD_EXPORTS))
def test_bad_input_gives_one_clear_error_and_leaves_artifacts_untouched(case, tiny_hps_checkpoint, store, tmp_path):
    arguments, error, fragment = BAD_EXPORTS[case]
    request = ExportRequest(**{"model": "hps-06-0.25x", "artifacts": store, **arguments(tiny_hps_checkpoint, tmp_path)})
    before = tree(store)
    with pytest.raises(error) as raised:
        run_export(request)
    assert_clear_error(raised.value, fragment)
    assert tree(store) == before


def test_unwritable_artifact_folder_is_refused_before_any_work(tiny_hps_checkpoint, read_only_dir):
    with pytest.raises(ArtifactError) as raised:
        run_export(ExportRequest(model="hps-06-0.25x", checkpoint=tiny_hps_checkpoint, artifacts=read_only_dir / "store"))
    assert_clear_error(raised.value, "not writable")
    assert list(read_only_dir.iterdir()) == []


def test_cli_export_prints_the_table_and_json_errors_in_one_line(toolchain, tiny_hps_checkpoint, tmp_path):  # noqa: F811
    made = toolchain("export", "--model", "hps-06-0.25x", "--checkpoint", tiny_hps_checkpoint, "--artifacts", tmp_path,
                     "--eval-count", SMALL_EVAL, "--max-drop", "100")
    assert made.code == 0, made.stderr
    assert made.stdout.splitlines()[1].split()[:3] == ["variant", "top-1", "%"]
    assert [line.split()[0] for line in made.stdout.splitlines()[2:4]] == ["fp32", "int8"]
    assert "artifact: " in made.stderr and ("slower" in made.stderr or "faster" in made.stderr)
    cached = toolchain("export", "--model", "hps-06-0.25x", "--checkpoint", tiny_hps_checkpoint, "--artifacts", tmp_path,
                       "--eval-count", SMALL_EVAL, "--max-drop", "100", "--json")
    document = json.loads(cached.stdout)
    assert document["cached"] and document["schema"] == "toolchain.manifest/1"
    assert "cached" not in cached.stderr  # JSON mode: data only on stdout, no table
    failed = toolchain("export", "--model", "hps-06-0.25x", "--checkpoint", tiny_hps_checkpoint, "--artifacts", tmp_path,
                       "--format", "qlinear")
    assert_one_line_error(failed, 2, "--format 'qlinear'")


def test_without_a_checkpoint_it_trains_one_then_reuses_it(monkeypatch, tmp_path, fashion_mnist_root):
    monkeypatch.setitem(pipeline.QUICK_TRAIN, "train_limit", 256)
    monkeypatch.setitem(pipeline.QUICK_TRAIN, "eval_limit", 128)
    messages: list[str] = []
    phases: set[str] = set()
    request = ExportRequest(model="hps-06-0.25x", data_dir=fashion_mnist_root, artifacts=tmp_path,
                            eval_count=SMALL_EVAL, quant=QuantSettings(max_drop=100))
    made = run_export(request, on_message=messages.append, on_train_progress=lambda event: phases.add(event.phase))
    assert any("training one now" in message for message in messages)
    assert {"start", "train", "epoch"} <= phases
    trained = list((tmp_path / "train" / "hps-06-0.25x" / "fashion-mnist").glob("*/checkpoint.pt"))
    assert len(trained) == 1
    assert made.manifest.to_json()["inputs"]["checkpoint"]["sha256"] == sha256_file(trained[0])
    messages.clear()
    again = run_export(request, on_message=messages.append)
    assert again.cached and again.folder == made.folder
    assert any("newest trained" in message for message in messages)
    assert os.listdir(tmp_path / "train" / "hps-06-0.25x" / "fashion-mnist") == [trained[0].parent.name]


def test_a_briefly_trained_checkpoint_near_chance_is_named_as_such():
    from toolchain.pipeline.workflows import near_chance_warning

    warning = near_chance_warning(10.8, 10, "hps-21-1x-v3")  # measured: the quick training of the deep HPS net
    assert warning and "near chance (10%)" in warning and "toolchain train --model hps-21-1x-v3" in warning
    assert near_chance_warning(float("nan"), 10, "m") is None  # unknown is not claimed to be poor
    assert near_chance_warning(55.0, 10, "hps-06-0.25x") is None and near_chance_warning(8.0, 100, "m") is None
