"""Multiply-accumulates of one image through an ONNX graph, read from the graph itself.

Counts what the registry's `count_macs` counts on the torch module (convolutions and fully connected
layers; pooling, activations and BatchNorm are not MACs), so a foreign ONNX file gets the same figure a
zoo model does. Shapes come from ONNX shape inference with the batch axis set to 1.
"""

from __future__ import annotations

from math import prod
from pathlib import Path
from typing import TYPE_CHECKING

from toolchain.errors import OnnxModelError

if TYPE_CHECKING:
    import onnx

MACS_SOURCE = "ONNX graph of model.fp32.onnx (Conv, Gemm, MatMul; batch 1)"


def batch_one_shapes(path: Path) -> tuple["onnx.ModelProto", dict[str, list[int]]]:
    """The model with shapes inferred at batch 1, and every tensor's shape (0 where a dimension is unknown)."""
    import onnx
    from onnx import shape_inference

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, OSError
        raise OnnxModelError(f"{path} is not a readable ONNX model ({type(exc).__name__})",
                             "re-create the artifact (toolchain export)") from None
    graph = model.graph
    initializers = {item.name for item in graph.initializer}
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:  # onnx raises InferenceError and others
        raise OnnxModelError(f"cannot infer the shapes of {path}: {str(exc).splitlines()[0][:200]}",
                             "re-create the artifact (toolchain export)") from None
    shapes: dict[str, list[int]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [dim.dim_value if dim.HasField("dim_value") else 0 for dim in dims]
    for item in inferred.graph.initializer:
        shapes[item.name] = list(item.dims)
    return inferred, shapes


def node_macs(path: Path, node: "onnx.NodeProto", shapes: dict[str, list[int]]) -> int:
    """MACs of one node at batch 1 (Conv, Gemm, MatMul; 0 for every other op)."""
    out = shapes.get(node.output[0]) if node.output else None
    if node.op_type == "Conv":
        weight = shapes.get(node.input[1])
        if not out or not weight or 0 in out or 0 in weight:
            raise OnnxModelError(f"{path}: the shape of {node.name or node.op_type} is unknown",
                                 "re-create the artifact (toolchain export)")
        # each output element: (C_in / group) x kernel MACs = weight's elements per output channel
        return prod(out) * prod(weight[1:])
    if node.op_type in ("Gemm", "MatMul"):
        left = shapes.get(node.input[0])
        if not out or not left or 0 in out or 0 in left:
            raise OnnxModelError(f"{path}: the shape of {node.name or node.op_type} is unknown",
                                 "re-create the artifact (toolchain export)")
        transposed = node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
        inner = left[-2] if transposed else left[-1]
        return prod(out) * inner
    return 0


def graph_macs(path: Path) -> int:
    """MACs of one forward pass of the FP32 graph at batch 1 (the INT8 graph does the same arithmetic)."""
    model, shapes = batch_one_shapes(path)
    return sum(node_macs(path, node, shapes) for node in model.graph.node)
