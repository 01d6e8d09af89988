"""Q/DQ graph surgery on quantized models: float nodes that stay float, unused opset imports, what was quantized."""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import onnx

_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm")


def _input_channels(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> int | None:
    """Channels of a Conv/ConvTranspose/Gemm's data input (axis 1), from its weight's shape."""
    weight = constants.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None or len(weight.dims) < 2:
        return None
    attributes = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
    if node.op_type == "Conv":
        return int(weight.dims[1]) * int(attributes.get("group", 1))
    if node.op_type == "ConvTranspose":
        return int(weight.dims[0])
    if attributes.get("transA", 0):
        return None
    return int(weight.dims[1] if attributes.get("transB", 0) else weight.dims[0])


def keep_float_weights(path: Path, float_nodes: Sequence[str]) -> int:
    """Make the nodes kept in float stay float under onnxruntime's own optimiser; returns how many it changed.

    onnxruntime >= 1.20's WeightBiasQuantization (a basic-level graph optimisation, on by default)
    quantizes the float weight of any Conv/Gemm whose input comes from a DequantizeLinear with a scalar
    scale: per tensor, symmetric INT8. A node the gate keeps in float would run with per-tensor INT8
    weights, which wrecks a layer whose channels differ in scale (measured: hps-06-0.5x with one such conv
    "kept in float" fell from 80.2 % to 41.0 % top-1). The input's DequantizeLinear is replaced by a per-axis
    one whose scale and zero point repeat the same value for every channel: the same numbers, but not a
    scalar scale, so the optimisation leaves the node alone. Needs opset 13 (per-axis DequantizeLinear).
    """
    if not float_nodes:
        return 0
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    opset = next((item.version for item in model.opset_import if item.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        return 0
    constants = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    wanted = set(float_nodes)
    changed = 0
    nodes = list(graph.node)
    rebuilt: list[onnx.NodeProto] = []
    for node in nodes:
        dq = producers.get(node.input[0]) if node.name in wanted and node.op_type in _WEIGHTED_OPS else None
        channels = _input_channels(node, constants) if dq is not None else None
        scale = (numpy_helper.to_array(constants[dq.input[1]])
                 if channels and dq.op_type == "DequantizeLinear" and dq.input[1] in constants else None)
        if scale is not None and scale.size == 1:
            scale = scale.reshape(())
            inputs = [dq.input[0], f"{node.name}_input_scale_per_axis"]
            graph.initializer.append(numpy_helper.from_array(np.full(channels, scale, dtype=scale.dtype), inputs[1]))
            if len(dq.input) > 2 and dq.input[2]:
                zero_point = numpy_helper.to_array(constants[dq.input[2]]).reshape(())
                inputs.append(f"{node.name}_input_zero_point_per_axis")
                graph.initializer.append(numpy_helper.from_array(
                    np.full(channels, zero_point, dtype=zero_point.dtype), inputs[2]))
            output = f"{node.name}_input_dequantized_per_axis"
            rebuilt.append(onnx.helper.make_node("DequantizeLinear", inputs, [output], name=f"{node.name}_input_dq",
                                                 axis=1))
            node.input[0] = output
            changed += 1
        rebuilt.append(node)
    if not changed:
        return 0
    used = {name for node in rebuilt for name in node.input}
    graph_outputs = {value.name for value in graph.output}
    rebuilt = [node for node in rebuilt if node.op_type != "DequantizeLinear"
               or any(name in used or name in graph_outputs for name in node.output)]
    del graph.node[:]
    graph.node.extend(rebuilt)
    used = {name for node in rebuilt for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(path))
    return changed


def drop_unused_opset_imports(path: Path) -> None:
    """Remove the opset imports of domains no node uses, in place.

    ORT's pre-processing saves its optimised graph with every domain the runtime registers
    (com.microsoft.nchwc, ai.onnx.preview.training, org.pytorch.aten, ...). Unused, they still make an
    older runtime on a target refuse the file, and make deploy's opset check name domains the model
    does not need.
    """
    model = onnx.load(str(path))
    used = {node.domain or "" for node in model.graph.node} | {""}
    kept = [item for item in model.opset_import if (item.domain or "") in used]
    if len(kept) == len(model.opset_import):
        return
    del model.opset_import[:]
    model.opset_import.extend(kept)
    onnx.save(model, str(path))


def quantizable_nodes(qdq_model: onnx.ModelProto, op_types: Collection[str] | None = None) -> list[onnx.NodeProto]:
    """Nodes of a QDQ model that read at least one dequantized tensor (those the quantizer touched).

    ``op_types``: only nodes of these types (a float BatchNormalization between a dequantize and a
    quantize reads a dequantized tensor too, yet nothing in it is quantized).
    """
    dequantized = {node.output[0] for node in qdq_model.graph.node if node.op_type == "DequantizeLinear"}
    return [node for node in qdq_model.graph.node
            if node.op_type not in _QDQ_OPS and any(name in dequantized for name in node.input)
            and (op_types is None or node.op_type in op_types)]
