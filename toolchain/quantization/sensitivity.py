"""Which quantized nodes lose most to INT8: per-channel signal-to-quantization-noise ratio of their tensors."""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from toolchain.graph.qdq import quantizable_nodes
from toolchain.quantization.ort import quiet_ort

_SUFFIXES = ("_DequantizeLinear_Output", "_QuantizeLinear_Output", "_QuantizeLinear_Input")
_WEIGHT_SUFFIX = "_quantized"


@dataclass(frozen=True)
class NodeScore:
    """How much quantization noise surrounds a node: the lowest SQNR (dB) of its tensors."""

    node: str
    op_type: str
    sqnr_db: float
    tensor: str

    def to_dict(self) -> dict:
        return asdict(self)

def _strip(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def _channel_sqnr_db(reference: np.ndarray, approximation: np.ndarray, axis: int | None) -> float:
    """Mean over channels of the signal-to-quantization-noise ratio in dB (silent channels skipped).

    Per channel, not per tensor: one outlier channel that stretches a tensor's range wipes out the
    other channels, yet dominates (and so hides in) a whole-tensor ratio.
    """
    if axis is None or reference.ndim < 2:
        reference, approximation = reference.reshape(1, -1), approximation.reshape(1, -1)
    else:
        reference = np.moveaxis(reference, axis, 0).reshape(reference.shape[axis], -1)
        approximation = np.moveaxis(approximation, axis, 0).reshape(reference.shape[0], -1)
    reference, approximation = reference.astype(np.float64), approximation.astype(np.float64)
    signal = np.square(reference).sum(axis=1)
    noise = np.square(reference - approximation).sum(axis=1)
    audible = signal > max(signal.max(), 1e-30) * 1e-12
    if not audible.any():
        return math.inf
    return float(np.mean(10.0 * np.log10(signal[audible] / np.maximum(noise[audible], 1e-30))))


def _fake_quantize(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """What QuantizeLinear -> DequantizeLinear makes of float values (per-tensor parameters)."""
    info = np.iinfo(zero_point.dtype)
    codes = np.clip(np.round(values / scale) + zero_point.astype(np.int64), info.min, info.max)
    return ((codes - zero_point.astype(np.int64)) * scale).astype(np.float32)


def _float_activations(model_path: Path, names: Sequence[str], images: np.ndarray, input_name: str
                       ) -> dict[str, np.ndarray]:
    """The float model's value of each named tensor on these images (intermediate tensors made outputs)."""
    from toolchain.evaluators.accuracy import open_session

    model = onnx.load(str(model_path))
    present = {value.name for value in model.graph.output}
    wanted = [name for name in names if name != input_name]
    for name in wanted:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory(prefix="toolchain-activations-") as scratch:
        augmented = Path(scratch) / "activations.onnx"
        onnx.save(model, str(augmented))
        values = open_session(augmented).run(wanted, {input_name: images})
    found = dict(zip(wanted, values))
    if input_name in names:
        found[input_name] = images
    return found


def score_nodes(float_model: Path, qdq_model: Path, images: np.ndarray, input_name: str,
                op_types: Sequence[str] | None = None) -> list[NodeScore]:
    """Score every quantized node by the lowest per-channel SQNR of its weights and activations.

    Local noise only, measured on the float model's own activations: each activation the QDQ model
    quantizes is fake-quantized with that model's scale and zero point; weights are compared with
    their dequantized values (ORT's qdq_loss_debug.create_weight_matching). Errors accumulated from
    upstream nodes do not count against a node. Lowest first: the nodes that lose most to INT8.
    ``op_types``: score only nodes of these types (those the shipped format quantizes).
    """
    from onnx import numpy_helper
    from onnxruntime.quantization.qdq_loss_debug import create_weight_matching

    model = onnx.load(str(qdq_model))
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    parameters = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in constants and len(node.input) > 2:
            parameters[_strip(node.input[0])] = (constants[node.input[1]], constants[node.input[2]])
    activations = _float_activations(float_model, list(parameters), images, input_name)
    activation_sqnr = {name: _channel_sqnr_db(value, _fake_quantize(value, *parameters[name]), axis=1)
                       for name, value in activations.items()}
    with quiet_ort():
        weights = create_weight_matching(str(float_model), str(qdq_model))
    weight_sqnr = {name: _channel_sqnr_db(pair["float"], pair["dequantized"], axis=0)
                   for name, pair in weights.items()}
    producers = {output: node for node in model.graph.node for output in node.output}
    scores = []
    for node in quantizable_nodes(model, op_types):
        measured: list[tuple[float, str]] = []
        for name in list(node.input) + list(node.output):
            producer = producers.get(name)
            source = producer.input[0] if producer is not None and producer.op_type == "DequantizeLinear" else name
            if source.endswith(_WEIGHT_SUFFIX) and source[:-len(_WEIGHT_SUFFIX)] in weight_sqnr:
                weight = source[:-len(_WEIGHT_SUFFIX)]
                measured.append((weight_sqnr[weight], weight))
            elif _strip(source) in activation_sqnr:
                measured.append((activation_sqnr[_strip(source)], _strip(source)))
        if measured:
            sqnr, tensor = min(measured)
            scores.append(NodeScore(node.name, node.op_type, round(float(sqnr), 3), tensor))
    return sorted(scores, key=lambda score: (score.sqnr_db, score.node))
