"""Per-layer figures of an artifact's graph: parameters, MACs, weight and activation bytes, arithmetic intensity.

One row per node of the FP32 file (batch 1, shapes from ONNX shape inference), with the INT8 file's
counterpart (`toolchain.profiling.join.map_int8`) and its bytes: 8-bit weights and activations where the INT8
file computes the node in int8, plus its scales, zero points and 32-bit biases. MACs count what
`toolchain.graph.macs` counts (Conv, Gemm, MatMul); FLOPs are 2 x MACs. Arithmetic intensity is FLOPs per
byte of the node's weights plus its input and output activations: what the node must move at least once,
so a lower bound of its traffic (caches hold small tensors across nodes; a roofline point to the left of
the ridge is bound by memory bandwidth, to the right by compute).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import prod
from pathlib import Path
from typing import Any, Mapping

from toolchain.profiling.join import Graph, Int8Map, map_int8

# bytes per element of onnx's TensorProto element types
_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


@dataclass(frozen=True)
class Layer:
    """One node of the FP32 file, and what its INT8 counterpart moves."""

    name: str
    op_type: str
    output_shape: list[int]
    params: int
    macs: int
    weight_bytes: int
    activation_bytes: int
    int8_node: str | None
    int8_precision: str | None  # "int8", "float" or None (no INT8 node)
    int8_weight_bytes: int | None
    int8_activation_bytes: int | None

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def intensity(self) -> float | None:
        moved = self.weight_bytes + self.activation_bytes
        return self.flops / moved if self.macs and moved else None

    @property
    def int8_intensity(self) -> float | None:
        moved = (self.int8_weight_bytes or 0) + (self.int8_activation_bytes or 0)
        return self.flops / moved if self.macs and moved and self.int8_node else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "flops": self.flops, "intensity": self.intensity,
                "int8_intensity": self.int8_intensity}


@dataclass(frozen=True)
class TypedModel:
    """A model file's graph with its tensors' shapes (batch 1) and element types."""

    path: Path
    graph: Graph
    shapes: dict[str, list[int]]
    types: dict[str, int]
    model: Any

    @classmethod
    def load(cls, path: Path) -> "TypedModel":
        from toolchain.graph.macs import batch_one_shapes

        inferred, shapes = batch_one_shapes(path)
        graph = inferred.graph
        types = {value.name: value.type.tensor_type.elem_type
                 for value in [*graph.input, *graph.value_info, *graph.output]}
        types.update({item.name: item.data_type for item in graph.initializer})
        return cls(path, Graph.from_onnx(inferred), shapes, types, inferred)

    def bytes_of(self, tensor: str) -> int:
        shape = self.shapes.get(tensor)
        if not shape or 0 in shape:
            return 0
        return prod(shape) * _ELEMENT_BYTES.get(self.types.get(tensor, 1), 4)

    def quantized_source(self, tensor: str) -> str:
        """The tensor a DequantizeLinear made `tensor` from (what a fused int8 kernel reads), else `tensor`."""
        producer = self.graph.producer.get(tensor)
        node = self.graph.by_name.get(producer) if producer else None
        return node.inputs[0] if node is not None and node.op_type == "DequantizeLinear" else tensor

    def quantized_output(self, tensor: str) -> str:
        """The QuantizeLinear output every reader of `tensor` makes of it (what a fused int8 kernel writes)."""
        readers = [self.graph.by_name[name] for name in self.graph.consumers.get(tensor, ())]
        if readers and all(reader.op_type == "QuantizeLinear" for reader in readers):
            return readers[0].outputs[0]
        return tensor


def _weights(model: TypedModel, node_inputs: tuple[str, ...], constants: set[str]) -> tuple[int, int]:
    """(parameters, bytes) of a node's constant inputs, counted from the initializers they come from."""
    params = size = 0
    for name in node_inputs:
        if not name or name not in constants:
            continue
        sources = [name] if name in model.graph.initializers else [
            source for source in model.graph.by_name[model.graph.producer[name]].inputs
            if source in model.graph.initializers] if name in model.graph.producer else []
        for source in sources:
            shape = model.shapes.get(source) or []
            params += prod(shape) if shape else 1
            size += model.bytes_of(source) or _ELEMENT_BYTES.get(model.types.get(source, 1), 4)
    return params, size


def layer_table(fp32_path: Path, int8_path: Path) -> tuple[list[Layer], Int8Map, TypedModel, TypedModel]:
    """The rows of the FP32 file in file order, the INT8 map, and both models as read."""
    from toolchain.graph.macs import node_macs

    fp32, int8 = TypedModel.load(fp32_path), TypedModel.load(int8_path)
    mapping = map_int8(fp32.graph, int8.graph, fp32.shapes, int8.shapes, int8.types)
    constants32, constants8 = fp32.graph.constants(), int8.graph.constants()
    protos = {node.name or f"{node.op_type}_{index}": node for index, node in enumerate(fp32.model.graph.node)}
    layers = []
    for node in fp32.graph.nodes:
        params, weight_bytes = _weights(fp32, node.inputs, constants32)
        activations = sum(fp32.bytes_of(name) for name in (*node.inputs, *node.outputs)
                          if name and name not in constants32)
        counterpart = mapping.counterpart.get(node.name)
        int8_weights = int8_activations = None
        if counterpart is not None:
            other = int8.graph.by_name[counterpart]
            int8_weights = _weights(int8, other.inputs, constants8)[1]
            int8_activations = (sum(int8.bytes_of(int8.quantized_source(name)) for name in other.inputs
                                    if name and name not in constants8)
                                + sum(int8.bytes_of(int8.quantized_output(name)) for name in other.outputs if name))
        layers.append(Layer(node.name, node.op_type, list(fp32.shapes.get(node.outputs[0], [])) if node.outputs else [],
                            params, node_macs(fp32_path, protos[node.name], fp32.shapes), weight_bytes, activations,
                            counterpart, mapping.precision.get(node.name), int8_weights, int8_activations))
    return layers, mapping, fp32, int8


def totals(layers: list[Layer]) -> Mapping[str, int]:
    return {"params": sum(layer.params for layer in layers), "macs": sum(layer.macs for layer in layers)}
