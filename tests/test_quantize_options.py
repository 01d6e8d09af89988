"""Static INT8 quantization: every method, format and type option gives a model onnxruntime runs,
calibrated through ORT's CalibrationDataReader contract on real images."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from toolchain.data.imagesets import load_definition, load_image_set
from toolchain.training.checkpoints import load_checkpoint
from toolchain.evaluators.accuracy import onnx_logits, open_session
from toolchain.graph.from_torch import export_onnx
from toolchain.graph.qdq import keep_float_weights
from toolchain.hashing import sha256_file
from toolchain.pipeline import quantize_with_gate
from toolchain.quantization.ort import (ImageCalibrationReader, calibrate, prepare_for_quantization,
                                        quantize_static_int8)
from toolchain.pipeline.config import QuantSettings
from toolchain.graph.simplify import simplify_onnx


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
    result = quantize_with_gate(path, tmp_path / "model.int8.onnx", settings, calibration, evaluation, "input")
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
        result = quantize_with_gate(path, tmp_path / f"{method}.onnx", settings, calibration, evaluation, "input")
        digests.add(sha256_file(result.path))
    assert len(digests) == 3  # each method chose its own activation ranges


def test_per_channel_weights_get_one_scale_per_output_channel(fp32_model, tmp_path):
    path, calibration, evaluation, fp32_logits = fp32_model
    result = quantize_with_gate(path, tmp_path / "pc.onnx", QuantSettings(format="qdq", max_drop=100.0),
                                calibration, evaluation, "input")
    model = onnx.load(str(result.path))
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    weight_scales = [constants[node.input[1]] for node in model.graph.node
                     if node.op_type == "DequantizeLinear" and constants.get(node.input[0]) is not None
                     and constants[node.input[0]].ndim == 4]
    assert weight_scales and all(scale.ndim == 1 and scale.size > 1 for scale in weight_scales)


def test_excluded_nodes_stay_in_float(fp32_model, tmp_path):
    path, calibration, evaluation, fp32_logits = fp32_model
    settings = QuantSettings(format="qoperator", exclude_nodes=("/stem/conv/Conv",), max_drop=100.0)
    result = quantize_with_gate(path, tmp_path / "excluded.onnx", settings, calibration, evaluation, "input")
    ops = [node.op_type for node in onnx.load(str(result.path)).graph.node]
    assert ops.count("Conv") == 1 and "QLinearConv" in ops


KEPT = "/stages/stages.1/stages.1.0/body/squeeze1/conv/Conv"  # reads a DequantizeLinear when kept in float


def _weight_is_float_after_ort_optimisation(model_path, node_name, weight, tmp_path) -> bool:
    """Whether the node still multiplies by exactly these float weights once onnxruntime optimised the graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(tmp_path / "optimised.onnx")).graph
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    node = next(node for node in graph.node if node.name == node_name)
    found = constants.get(node.input[1])  # None: produced by a node (a DequantizeLinear)
    return found is not None and found.dtype == np.float32 and np.array_equal(found, weight)


@pytest.mark.parametrize("quant_format", ["qoperator", "qdq"])
def test_nodes_kept_in_float_keep_float_weights_under_onnxruntime(fp32_model, tmp_path, quant_format):
    """onnxruntime's WeightBiasQuantization would quantize a kept node's weight per tensor; the per-axis
    input DequantizeLinear keeps it float and computes the same numbers."""
    path, calibration, evaluation, _ = fp32_model
    simplified, prepared, cache = tmp_path / "simplified.onnx", tmp_path / "prepared.onnx", tmp_path / "cal.json"
    # as the pipeline makes it: the BatchNorm after the ReLU folded away, so Conv -> ReLU -> QuantizeLinear
    assert simplify_onnx(path, simplified).batchnorm_folded > 0
    prepare_for_quantization(simplified, prepared)
    settings = QuantSettings(format=quant_format, max_drop=100.0, reduce_range=False)
    calibrate(prepared, calibration.images, "input", settings, cache)
    protected = quantize_static_int8(prepared, tmp_path / "protected.onnx", settings, cache, (KEPT,))
    model = onnx.load(str(protected))
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    kept = next(node for node in model.graph.node if node.name == KEPT)
    dequantize = producers[kept.input[0]]
    assert kept.op_type == "Conv" and dequantize.op_type == "DequantizeLinear"
    scale = constants[dequantize.input[1]]
    assert scale.ndim == 1 and scale.size == constants[kept.input[1]].shape[1] and len(set(scale.tolist())) == 1
    weight = numpy_helper.to_array(next(tensor for tensor in onnx.load(str(prepared)).graph.initializer
                                        if tensor.name == kept.input[1]))
    assert _weight_is_float_after_ort_optimisation(protected, KEPT, weight, tmp_path)

    # the same model as onnxruntime.quantization writes it: the runtime quantizes the "float" weight
    plain = tmp_path / "plain.onnx"
    import onnxruntime.quantization as ortq
    ortq.quantize_static(str(prepared), str(plain), None, calibrate_method=ortq.CalibrationMethod.MinMax,
                         quant_format=ortq.QuantFormat.QDQ if quant_format == "qdq" else ortq.QuantFormat.QOperator,
                         per_channel=True, activation_type=ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QInt8,
                         nodes_to_exclude=[KEPT], calibration_cache_path=str(cache))
    assert not _weight_is_float_after_ort_optimisation(plain, KEPT, weight, tmp_path)
    # and the protection changes no number: both agree exactly when nothing is optimised away
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    outputs = [ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
               .run(None, {"input": evaluation.images[:20]})[0] for model_path in (protected, plain)]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert keep_float_weights(protected, [KEPT]) == 0  # already per axis: nothing left to change


def test_calibration_reader_follows_the_ort_contract():
    images = np.arange(70 * 4, dtype=np.float32).reshape(70, 1, 2, 2)
    reader = ImageCalibrationReader(images, "input", batch_size=32)
    sizes = [len(batch["input"]) for batch in iter(reader.get_next, None)]
    assert sizes == [14] * 5 and len(reader) == 5  # equal batches: ORT's histogram calibrators stack them
    assert reader.get_next() is None
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["input"], images[:14])



def test_pre_processing_takes_relative_paths(tmp_path, monkeypatch):
    """It runs in a scratch cwd (ORT litters the cwd): relative paths must be resolved before that."""
    from pathlib import Path

    from toolchain.graph.from_torch import export_onnx
    from toolchain.models import create_model
    from toolchain.quantization.ort import prepare_for_quantization

    export_onnx(create_model("hps-06-0.25x", num_classes=10, in_channels=1).eval(), torch.zeros(1, 1, 32, 32),
                tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    prepare_for_quantization(Path("model.onnx"), Path("prepared.onnx"))
    assert (tmp_path / "prepared.onnx").stat().st_size > 0 and sorted(p.name for p in tmp_path.iterdir()) == \
        ["model.onnx", "prepared.onnx"]
