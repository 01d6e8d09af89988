"""Which quantized nodes lose most to INT8: per-channel signal-to-quantization-noise ratio of their tensors.

Equal local scores are common and structural: a tensor read by two nodes (a ReLU feeding two convs, a
conv's output that an Add also reads) scores both when it is their noisiest. `rank_nodes` orders such
ties by what each node alone does to the final logits.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from toolchain.graph.qdq import quantizable_nodes
from toolchain.quantization.ort import quiet_ort

_SUFFIXES = ("_DequantizeLinear_Output", "_QuantizeLinear_Output", "_QuantizeLinear_Input")
_WEIGHT_SUFFIX = "_quantized"
# Local scores within this many dB of the first of a run are a tie. Measured on the tests' trained hps-06-0.25x
# and hps-06-0.5x (32 calibration images): 5 and 9 groups tie exactly (a shared tensor), 0.1 dB adds 3 and 2
# more whose nodes have different noisiest tensors.
TIE_DB = 0.1
# At most this many tied nodes get the logit measurement (one float run on the scorer's images each).
TIE_BREAK_CAP = 16


@dataclass(frozen=True)
class NodeScore:
    """How much quantization noise surrounds a node: the lowest SQNR (dB) of its tensors."""

    node: str
    op_type: str
    sqnr_db: float
    tensor: str
    logit_sqnr_db: float | None = None  # tied nodes only: the logits' SQNR with only this node quantized

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


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


@dataclass
class _Twin:
    """What a QDQ twin quantizes: activation parameters, weights beside their dequantized values, per node."""

    activations: dict[str, tuple[np.ndarray, np.ndarray]]  # float tensor -> (scale, zero point)
    weights: dict[str, dict[str, np.ndarray]]  # float initializer -> {"float": ..., "dequantized": ...}
    tensors: dict[str, list[tuple[str, str]]]  # node -> [("activation" | "weight", float tensor)]
    op_types: dict[str, str]  # node -> op type

    @classmethod
    def read(cls, float_model: Path, qdq_model: Path, op_types: Sequence[str] | None) -> "_Twin":
        from onnx import numpy_helper
        from onnxruntime.quantization.qdq_loss_debug import create_weight_matching

        model = onnx.load(str(qdq_model))
        constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
        activations = {}
        for node in model.graph.node:
            if node.op_type == "QuantizeLinear" and node.input[1] in constants and len(node.input) > 2:
                activations[_strip(node.input[0])] = (constants[node.input[1]], constants[node.input[2]])
        with quiet_ort():
            weights = create_weight_matching(str(float_model), str(qdq_model))
        producers = {output: node for node in model.graph.node for output in node.output}
        tensors: dict[str, list[tuple[str, str]]] = {}
        kinds: dict[str, str] = {}
        for node in quantizable_nodes(model, op_types):
            found: list[tuple[str, str]] = []
            for name in list(node.input) + list(node.output):
                producer = producers.get(name)
                source = producer.input[0] if producer is not None and producer.op_type == "DequantizeLinear" else name
                if source.endswith(_WEIGHT_SUFFIX) and source[:-len(_WEIGHT_SUFFIX)] in weights:
                    entry = ("weight", source[:-len(_WEIGHT_SUFFIX)])
                elif _strip(source) in activations:
                    entry = ("activation", _strip(source))
                else:
                    continue
                if entry not in found:
                    found.append(entry)
            if found:
                tensors[node.name], kinds[node.name] = found, node.op_type
        return cls(activations, weights, tensors, kinds)


def _local_scores(twin: _Twin, float_model: Path, images: np.ndarray, input_name: str) -> list[NodeScore]:
    activations = _float_activations(float_model, list(twin.activations), images, input_name)
    sqnr = {("activation", name): _channel_sqnr_db(value, _fake_quantize(value, *twin.activations[name]), axis=1)
            for name, value in activations.items()}
    sqnr.update({("weight", name): _channel_sqnr_db(pair["float"], pair["dequantized"], axis=0)
                 for name, pair in twin.weights.items()})
    scores = []
    for node, tensors in twin.tensors.items():
        value, tensor = min((sqnr[entry], entry[1]) for entry in tensors)
        scores.append(NodeScore(node, twin.op_types[node], round(float(value), 3), tensor))
    return sorted(scores, key=lambda score: (score.sqnr_db, score.node))


def score_nodes(float_model: Path, qdq_model: Path, images: np.ndarray, input_name: str,
                op_types: Sequence[str] | None = None) -> list[NodeScore]:
    """Score every quantized node by the lowest per-channel SQNR of its weights and activations.

    Local noise only, measured on the float model's own activations: each activation the QDQ model
    quantizes is fake-quantized with that model's scale and zero point; weights are compared with
    their dequantized values (ORT's qdq_loss_debug.create_weight_matching). Errors accumulated from
    upstream nodes do not count against a node. Lowest first: the nodes that lose most to INT8; equal
    scores by node name (`rank_nodes` orders them by their effect on the logits instead).
    ``op_types``: score only nodes of these types (those the shipped format quantizes).
    """
    return _local_scores(_Twin.read(float_model, qdq_model, op_types), float_model, images, input_name)


def _fake_quantize_nodes(source: str, target: str, scale: np.ndarray, zero_point: np.ndarray,
                         graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """QuantizeLinear -> DequantizeLinear from ``source`` to ``target`` with the twin's parameters."""
    from onnx import numpy_helper

    graph.initializer.extend([numpy_helper.from_array(np.asarray(scale).reshape(()), f"{target}_scale"),
                              numpy_helper.from_array(np.asarray(zero_point).reshape(()), f"{target}_zero_point")])
    parameters = [f"{target}_scale", f"{target}_zero_point"]
    return [onnx.helper.make_node("QuantizeLinear", [source, *parameters], [f"{target}_q"], name=f"{target}_Q"),
            onnx.helper.make_node("DequantizeLinear", [f"{target}_q", *parameters], [target], name=f"{target}_DQ")]


def _only_node_quantized(model: onnx.ModelProto, twin: _Twin, name: str) -> onnx.ModelProto | None:
    """The float model with only ``name``'s tensors as the twin quantizes them (None: no such float node).

    Weights take their dequantized values (for this node only); an input is fake-quantized on this node's
    edge only; an output (or the output of an activation fused into the node) where it is produced, so
    every reader sees it quantized, as in the deployed graph.
    """
    from onnx import numpy_helper

    variant = onnx.ModelProto()
    variant.CopyFrom(model)
    graph = variant.graph
    node = next((item for item in graph.node if item.name == name), None)
    if node is None:
        return None
    before: list[onnx.NodeProto] = []
    after: dict[int, list[onnx.NodeProto]] = {}
    producers = {output: index for index, item in enumerate(graph.node) for output in item.output}
    for number, (kind, tensor) in enumerate(twin.tensors[name]):
        renamed = f"{tensor}_only_quantized_{number}"
        if kind == "weight":
            graph.initializer.append(numpy_helper.from_array(
                np.asarray(twin.weights[tensor]["dequantized"], dtype=np.float32), renamed))
            node.input[:] = [renamed if item == tensor else item for item in node.input]
        elif tensor in node.input:
            before += _fake_quantize_nodes(tensor, renamed, *twin.activations[tensor], graph)
            node.input[:] = [renamed if item == tensor else item for item in node.input]
        elif tensor in producers:
            producer = graph.node[producers[tensor]]
            producer.output[:] = [renamed if item == tensor else item for item in producer.output]
            after.setdefault(producers[tensor], []).extend(
                _fake_quantize_nodes(renamed, tensor, *twin.activations[tensor], graph))
    nodes = []
    for index, item in enumerate(graph.node):
        nodes += (before if item is node else []) + [item] + after.get(index, [])
    del graph.node[:]
    graph.node.extend(nodes)
    return variant


def _logit_sqnr_db(float_model: Path, twin: _Twin, nodes: Sequence[str], images: np.ndarray, input_name: str
                   ) -> dict[str, float]:
    """Per node: the final logits' SQNR (dB, over all images) against the float model's, only that node quantized.

    Fake quantization in the float model, not a QDQ twin stripped of the other nodes' pairs: it is the
    twin's own arithmetic for that node (its scales, zero points and dequantized weights) on float
    kernels, with no graph surgery on ORT's shared dequantize nodes; one float run per node. Not ORT's own
    QDQ of that node alone (``nodes_to_quantize``): that quantizes a conv's pre-ReLU output with its own
    range, where the whole model quantizes the ReLU's (measured on the tiny hps-06-0.25x: scale 2.84
    against 0.027, 0.9 dB logits against 38 dB), which is not the deployed node's error. Run without
    graph optimisation: ORT would fuse the fake quantization around a conv into an integer conv whose
    float weight it quantizes per tensor (measured: a briefly trained hps-06-0.5x conv's logits then fell
    to 0.1 dB SQNR; as written, 39 dB).
    """
    from toolchain.evaluators.accuracy import open_session

    model = onnx.load(str(float_model))
    output = model.graph.output[0].name
    reference = open_session(float_model, optimize=False).run([output], {input_name: images})[0]
    measured = {}
    with tempfile.TemporaryDirectory(prefix="toolchain-tie-") as scratch:
        for name in nodes:
            variant = _only_node_quantized(model, twin, name)
            if variant is None:
                continue
            path = Path(scratch) / "variant.onnx"
            onnx.save(variant, str(path))
            logits = open_session(path, optimize=False).run([output], {input_name: images})[0]
            measured[name] = round(_channel_sqnr_db(reference, logits, axis=None), 3)
    return measured


def _tied_groups(scores: Sequence[NodeScore], tolerance: float) -> list[list[int]]:
    """Runs of positions whose local scores lie within ``tolerance`` dB of the run's first (two or more)."""
    groups, start = [], 0
    for index in range(1, len(scores) + 1):
        if index == len(scores) or scores[index].sqnr_db - scores[start].sqnr_db > tolerance:
            if index - start > 1:
                groups.append(list(range(start, index)))
            start = index
    return groups


def rank_nodes(float_model: Path, qdq_model: Path, images: np.ndarray, input_name: str,
               op_types: Sequence[str] | None = None, head: int | None = None, cap: int = TIE_BREAK_CAP,
               tolerance: float = TIE_DB) -> tuple[list[NodeScore], dict]:
    """`score_nodes`' ranking with its ties ordered by each node's effect on the final logits; and the record.

    A tie: local scores within ``tolerance`` dB of the first of a run. In each tied group that starts in
    the first ``head`` positions (those the gate can keep in float; None: all), from the top, each node's
    logits' SQNR with only its tensors quantized is measured on the same images (`_logit_sqnr_db`); the
    node that hurts the logits more (lower SQNR) ranks first, equal ones by name. At most ``cap`` nodes
    are measured, whole groups only; the groups past the cap keep the name order and are counted.
    """
    twin = _Twin.read(float_model, qdq_model, op_types)
    scores = _local_scores(twin, float_model, images, input_name)
    started = time.perf_counter()
    groups = [group for group in _tied_groups(scores, tolerance) if head is None or group[0] < head]
    record: dict = {"tolerance_db": tolerance, "cap_nodes": cap, "head_nodes": head, "images": int(len(images)),
                    "metric": "logits' SQNR (dB) against the float model, only that node quantized",
                    "groups": [], "groups_not_measured": 0}
    measured = 0
    for group in groups:
        if measured + len(group) > cap:
            record["groups_not_measured"] = len(groups) - len(record["groups"])
            break
        names = [scores[index].node for index in group]
        effect = _logit_sqnr_db(float_model, twin, names, images, input_name)
        measured += len(group)
        tied = [replace(scores[index], logit_sqnr_db=effect.get(scores[index].node)) for index in group]
        tied.sort(key=lambda score: (math.inf if score.logit_sqnr_db is None else score.logit_sqnr_db, score.node))
        record["groups"].append({"nodes": [score.node for score in tied],
                                 "local_sqnr_db": [score.sqnr_db for score in tied],
                                 "logit_sqnr_db": [score.logit_sqnr_db for score in tied],
                                 "reordered": [score.node for score in tied] != names})
        scores[group[0]:group[-1] + 1] = tied
    record["measured_nodes"] = measured
    record["seconds"] = round(time.perf_counter() - started, 3)
    return scores, record
