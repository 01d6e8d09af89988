"""The layers the accelerator runs: convolutions and fully connected layers as shapes, from torch or ONNX.

A fully connected layer is a 1x1 convolution on a 1x1 map (how the accelerator runs it). Pooling,
BatchNorm, activations, element-wise sums and concatenations are not layers here: the simulator, as
the paper's Figure 6, counts the convolution and fully connected layers only (see docs/simulate.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import OnnxModelError


@dataclass(frozen=True)
class ConvLayer:
    """One convolution (or fully connected) layer, by shape only. Sizes are unpadded input and output maps."""

    name: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    groups: int = 1
    kind: str = "conv"  # "conv" or "fc"

    @property
    def macs(self) -> int:
        return self.out_size[0] * self.out_size[1] * self.out_channels * self.weights_per_output

    @property
    def weights_per_output(self) -> int:
        return self.in_channels // self.groups * self.kernel[0] * self.kernel[1]

    @property
    def weights(self) -> int:
        return self.out_channels * self.weights_per_output

    @property
    def inputs(self) -> int:
        return self.in_channels * self.in_size[0] * self.in_size[1]

    @property
    def outputs(self) -> int:
        return self.out_channels * self.out_size[0] * self.out_size[1]

    @property
    def shape_text(self) -> str:
        """e.g. '3x224x224 -> 64x112x112, 7x7/2' (with '/g32' for grouped layers)."""
        kernel = f"{self.kernel[0]}x{self.kernel[1]}"
        stride = f"/{self.stride[0]}" if self.stride[0] == self.stride[1] else f"/{self.stride[0]}x{self.stride[1]}"
        groups = f" g{self.groups}" if self.groups > 1 else ""
        return (f"{self.in_channels}x{self.in_size[0]}x{self.in_size[1]} -> "
                f"{self.out_channels}x{self.out_size[0]}x{self.out_size[1]}, {kernel}{stride}{groups}")


def fully_connected(name: str, in_features: int, out_features: int) -> ConvLayer:
    """A fully connected layer as the accelerator runs it: a 1x1 convolution on a 1x1 map."""
    return ConvLayer(name=name, in_channels=in_features, out_channels=out_features, kernel=(1, 1), stride=(1, 1),
                     in_size=(1, 1), out_size=(1, 1), kind="fc")


def layers_of_torch(model: object, input_shape: tuple[int, int, int]) -> list[ConvLayer]:
    """The Conv2d and Linear layers of a torch network, with the shapes one forward pass at `input_shape` gives."""
    import torch
    from torch import nn

    assert isinstance(model, nn.Module)
    found: list[ConvLayer] = []
    names = {module: name for name, module in model.named_modules()}

    def on_conv(module: nn.Conv2d, inputs: tuple, output: torch.Tensor) -> None:
        source = inputs[0]
        found.append(ConvLayer(
            name=names[module], in_channels=module.in_channels, out_channels=module.out_channels,
            kernel=tuple(module.kernel_size), stride=tuple(module.stride),  # type: ignore[arg-type]
            in_size=(source.shape[2], source.shape[3]), out_size=(output.shape[2], output.shape[3]),
            groups=module.groups))

    def on_linear(module: nn.Linear, _inputs: tuple, _output: torch.Tensor) -> None:
        found.append(fully_connected(names[module], module.in_features, module.out_features))

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(on_conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(on_linear))
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return found


_NO_LAYERS_HINT = "pass an image classifier with Conv (or Gemm/MatMul) layers, e.g. one `toolchain export` wrote"


def layers_of_onnx(path: Path) -> tuple[list[ConvLayer], tuple[int, int, int]]:
    """The Conv, Gemm and MatMul layers of an ONNX image classifier with their inferred shapes, and its input C,H,W.

    The file is checked as every ONNX input of the tool (toolchain.graph.model); node names are data.
    QDQ models work too: a weight that comes out of a DequantizeLinear has the shape shape inference gives it.
    """
    import onnx

    from toolchain.graph.model import inspect_classifier, load_model

    io = inspect_classifier(path)
    model = load_model(path)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # onnx raises InferenceError, ValidationError, RuntimeError
        raise OnnxModelError(f"{path}: ONNX shape inference failed ({type(exc).__name__})",
                             "simplify the model first (toolchain export writes simplified models)") from None
    graph = inferred.graph
    shapes: dict[str, list[int | None]] = {t.name: list(t.dims) for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None
                              for d in value.type.tensor_type.shape.dim]
    shapes[io.input_name] = [1, *io.input_shape]
    layers: list[ConvLayer] = []
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        if node.op_type in ("Conv", "QLinearConv", "ConvInteger"):
            data, weight = (node.input[0], node.input[3]) if node.op_type == "QLinearConv" else node.input[:2]
            layers.append(_onnx_conv(path, name, node, shapes.get(data), shapes.get(weight),
                                     shapes.get(node.output[0])))
        elif node.op_type in ("Gemm", "MatMul", "QLinearMatMul", "MatMulInteger"):
            weight_name = node.input[3] if node.op_type == "QLinearMatMul" else node.input[1]
            weight = shapes.get(weight_name)
            if weight is None or len(weight) != 2 or None in weight:
                continue  # an activation x activation product is no layer of weights
            transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute)
            out_features, in_features = (weight[0], weight[1]) if transposed else (weight[1], weight[0])
            layers.append(fully_connected(name, int(in_features), int(out_features)))  # type: ignore[arg-type]
    if not layers:
        raise OnnxModelError(f"{path} has no Conv, Gemm or MatMul layer to simulate", _NO_LAYERS_HINT)
    return layers, io.input_shape


def _onnx_conv(path: Path, name: str, node: object, data: list | None, weight: list | None,
               output: list | None) -> ConvLayer:
    attributes = {a.name: a for a in node.attribute}  # type: ignore[attr-defined]
    if (data is None or weight is None or output is None or len(data) != 4 or len(weight) != 4
            or len(output) != 4 or None in data[1:] or None in weight or None in output[1:]):
        raise OnnxModelError(f"{path}: the shapes of Conv node {name!r} cannot be inferred (not 2-D, or dynamic)",
                             "export the classifier with a fixed C x H x W input and 2-D convolutions")
    groups = attributes["group"].i if "group" in attributes else 1
    strides = tuple(attributes["strides"].ints) if "strides" in attributes else (1, 1)
    return ConvLayer(name=name, in_channels=int(data[1]), out_channels=int(weight[0]),
                     kernel=(int(weight[2]), int(weight[3])), stride=(int(strides[0]), int(strides[1])),
                     in_size=(int(data[2]), int(data[3])), out_size=(int(output[2]), int(output[3])),
                     groups=int(groups))


def conv_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool = False) -> int:
    """Output length of a convolution or pooling window along one axis (Caffe's ceil mode for pools)."""
    span = size + 2 * padding - kernel
    steps = math.ceil(span / stride) if ceil_mode else span // stride
    return steps + 1
