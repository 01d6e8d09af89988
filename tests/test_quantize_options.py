"""Static INT8 quantization: every method, format and type option gives a model onnxruntime runs,
calibrated through ORT's CalibrationDataReader contract on real images."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from toolchain.calibration import load_definition, load_image_set
from toolchain.checkpoints import load_checkpoint
from toolchain.evaluate import onnx_logits, open_session
from toolchain.export import export_onnx
from toolchain.hashing import sha256_file
from toolchain.quantize import ImageCalibrationReader, quantize_with_gate
from toolchain.settings import QuantSettings


@pytest.fixture(scope="module")
def fp32_model(tiny_hps, tmp_path_factory):
    """The tiny trained hps-06-0.25x as FP32 ONNX, with calibration and eval images and its logits."""
    loaded = load_checkpoint(tiny_hps.checkpoint)
    calibration_definition = load_definition("fashion-mnist")
    calibration = load_image_set(calibration_definition, loaded.info.mean, loaded.info.std)
    evaluation = load_image_set(calibration_definition.eval_counterpart(200), loaded.info.mean, loaded.info.std)
    path = tmp_path_factory.mktemp("quantize") / "model.fp32.onnx"
    export_onnx(loaded.model, torch.from_numpy(evaluation.images[:1]), path)
    return path, calibration, evaluation, onnx_logits(path, evaluation.images)


OPTIONS = {
    "minmax-qoperator": QuantSettings(method="minmax", format="qoperator"),
    "entropy-qoperator": QuantSettings(method="entropy", format="qoperator"),
    "percentile-qoperator": QuantSettings(method="percentile", format="qoperator"),
    "minmax-qdq": QuantSettings(method="minmax", format="qdq"),
    "entropy-qdq": QuantSettings(method="entropy", format="qdq"),
    "percentile-qdq": QuantSettings(method="percentile", format="qdq"),
    "int8-activations-qdq": QuantSettings(format="qdq", activation_type="int8"),
    "int8-activations-qoperator": QuantSettings(format="qoperator", activation_type="int8"),
    "per-tensor-reduce-range": QuantSettings(per_channel=False, reduce_range=True),
}


def _activation_zero_point_types(model: onnx.ModelProto) -> set[int]:
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    return {constants[node.input[2]].data_type for node in model.graph.node
            if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in constants}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_quantization_option_gives_a_model_onnxruntime_runs(name, fp32_model, tmp_path):
    path, calibration, evaluation, fp32_logits = fp32_model
    settings = QuantSettings(**{**OPTIONS[name].to_dict(), "exclude_nodes": (), "max_drop": 100.0})
    result = quantize_with_gate(path, tmp_path / "model.int8.onnx", settings, calibration, evaluation,
                                fp32_logits, "input")
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model)
    ops = {node.op_type for node in model.graph.node}
    logits = open_session(result.path).run(None, {"input": evaluation.images[:5]})[0]
    assert logits.shape == (5, 10) and np.isfinite(logits).all()
    if settings.format == "qoperator":
        assert "QLinearConv" in ops
    else:
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "QLinearConv" not in ops
    expected = onnx.TensorProto.INT8 if settings.activation_type == "int8" else onnx.TensorProto.UINT8
    assert _activation_zero_point_types(model) == {expected}
    assert result.int8_top1 == pytest.approx(
        float((onnx_logits(result.path, evaluation.images).argmax(1) == evaluation.labels).mean() * 100))
    assert result.steps[0].kept_float == ()


def test_calibration_methods_really_differ(fp32_model, tmp_path):
    path, calibration, evaluation, fp32_logits = fp32_model
    digests = set()
    for method in ("minmax", "entropy", "percentile"):
        settings = QuantSettings(method=method, format="qdq", max_drop=100.0)
        result = quantize_with_gate(path, tmp_path / f"{method}.onnx", settings, calibration, evaluation,
                                    fp32_logits, "input")
        digests.add(sha256_file(result.path))
    assert len(digests) == 3  # each method chose its own activation ranges


def test_per_channel_weights_get_one_scale_per_output_channel(fp32_model, tmp_path):
    path, calibration, evaluation, fp32_logits = fp32_model
    result = quantize_with_gate(path, tmp_path / "pc.onnx", QuantSettings(format="qdq", max_drop=100.0),
                                calibration, evaluation, fp32_logits, "input")
    model = onnx.load(str(result.path))
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    weight_scales = [constants[node.input[1]] for node in model.graph.node
                     if node.op_type == "DequantizeLinear" and constants.get(node.input[0]) is not None
                     and constants[node.input[0]].ndim == 4]
    assert weight_scales and all(scale.ndim == 1 and scale.size > 1 for scale in weight_scales)


def test_excluded_nodes_stay_in_float(fp32_model, tmp_path):
    path, calibration, evaluation, fp32_logits = fp32_model
    settings = QuantSettings(format="qoperator", exclude_nodes=("/stem/conv/Conv",), max_drop=100.0)
    result = quantize_with_gate(path, tmp_path / "excluded.onnx", settings, calibration, evaluation,
                                fp32_logits, "input")
    ops = [node.op_type for node in onnx.load(str(result.path)).graph.node]
    assert ops.count("Conv") == 1 and "QLinearConv" in ops


def test_calibration_reader_follows_the_ort_contract():
    images = np.arange(70 * 4, dtype=np.float32).reshape(70, 1, 2, 2)
    reader = ImageCalibrationReader(images, "input", batch_size=32)
    sizes = [len(batch["input"]) for batch in iter(reader.get_next, None)]
    assert sizes == [32, 32, 6] and len(reader) == 3
    assert reader.get_next() is None
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["input"], images[:32])

