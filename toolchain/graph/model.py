"""ONNX image classifiers as the pipeline sees them: checked input layout, names, metadata, compaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx

from toolchain.errors import OnnxModelError

_HINT_FORMAT = "pass an .onnx file of an image classifier with one float input N x C x H x W"


@dataclass(frozen=True)
class ClassifierIO:
    """The one input and one output of an image classifier, and what its metadata says."""

    input_name: str
    input_shape: tuple[int, int, int]  # C, H, W
    batch: int | None  # None: dynamic batch axis
    output_name: str
    num_classes: int | None
    opset: int
    metadata: dict[str, str] = field(default_factory=dict)


def load_model(path: Path) -> onnx.ModelProto:
    """An ONNX model from a file, or a one-line error saying why it is not one."""
    if not path.is_file():
        raise OnnxModelError(f"ONNX file {path} not found", _HINT_FORMAT)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, onnx's own errors, OSError
        raise OnnxModelError(f"{path} is not an ONNX model ({type(exc).__name__})", _HINT_FORMAT) from None
    if not model.ir_version or not model.graph.node:
        raise OnnxModelError(f"{path} is not an ONNX model (no IR version or no graph)", _HINT_FORMAT)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise OnnxModelError(f"{path} is not a valid ONNX model: {str(exc).splitlines()[0][:160]}",
                             _HINT_FORMAT) from None
    return model


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    return [dim.dim_value if dim.HasField("dim_value") else None
            for dim in value.type.tensor_type.shape.dim]


def inspect_classifier(path: Path) -> ClassifierIO:
    """Check that a file is an NCHW float image classifier and describe its input and output."""
    model = load_model(path)
    graph = model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise OnnxModelError(f"{path.name} has {len(inputs)} inputs and {len(graph.output)} outputs; "
                             "an image classifier has one of each", _HINT_FORMAT)
    source, result = inputs[0], graph.output[0]
    if source.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(source.type.tensor_type.elem_type)
        raise OnnxModelError(f"{path.name}: input {source.name!r} is {kind}, not float32",
                             "quantize the float32 model, not an already quantized one")
    dims = _dims(source)
    channels_first = (len(dims) == 4 and None not in dims[1:]
                      and dims[1] <= min(dims[2], dims[3]))  # type: ignore[operator]
    if not channels_first:
        shown = [d if d is not None else "?" for d in dims]
        raise OnnxModelError(f"{path.name}: input {source.name!r} has shape {shown}, not N x C x H x W "
                             "with fixed C, H, W (channels last?)",
                             "export the classifier with an NCHW input (as PyTorch models are)")
    out_dims = _dims(result)
    if len(out_dims) != 2:
        raise OnnxModelError(f"{path.name}: output {result.name!r} has rank {len(out_dims)}, expected N x classes",
                             _HINT_FORMAT)
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    return ClassifierIO(input_name=source.name, input_shape=(dims[1], dims[2], dims[3]),  # type: ignore[arg-type]
                        batch=dims[0], output_name=result.name, num_classes=out_dims[1], opset=opset,
                        metadata={entry.key: entry.value for entry in model.metadata_props})


def count_nodes(path: Path) -> int:
    """Number of nodes in a model's main graph."""
    return len(onnx.load(str(path), load_external_data=False).graph.node)


def add_metadata(path: Path, entries: dict[str, str]) -> None:
    """Set metadata_props entries of a model file, in place (weights stay embedded)."""
    model = onnx.load(str(path))
    existing = {entry.key: entry for entry in model.metadata_props}
    for key, value in entries.items():
        entry = existing.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def compact_names(path: Path) -> None:
    """Rename a model's nodes and inner tensors to short names and drop its value_info, in place.

    The quantizer's names (``/stages/stages.3/.../Relu_output_0_DequantizeLinear_Output``) are a third
    of a small INT8 model's bytes; value_info only repeats shapes onnxruntime infers itself. The
    graph's input and output keep their names; nothing computes differently. Models with subgraphs
    (If, Loop) are left as they are: their inner graphs may use outer names.
    """
    model = onnx.load(str(path))
    graph = model.graph
    if any(attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in graph.node for attribute in node.attribute):
        return
    keep = {value.name for value in graph.input} | {value.name for value in graph.output}
    renamed: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return renamed.setdefault(name, f"t{len(renamed):x}")

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
    for index, node in enumerate(graph.node):
        node.name = f"{node.op_type}_{index}"
        node.input[:] = [short(name) for name in node.input]
        node.output[:] = [short(name) for name in node.output]
    del graph.value_info[:]
    onnx.save(model, str(path))
