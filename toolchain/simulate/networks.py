"""Where the simulator's layer shapes come from: the model zoo, the paper's reference networks, or an ONNX file.

The SqueezeNext paper's Table 3 compares SqueezeNext with AlexNet, SqueezeNet v1.0/v1.1, Tiny Darknet and
MobileNet v1 in their ImageNet shapes. SqueezeNext and SqueezeNet come from the zoo's own builders (the
registry's ImageNet configuration of SqueezeNext; SqueezeNet's builder is the ImageNet network itself, only
its class count and input size change); AlexNet, MobileNet v1 and Tiny Darknet are shape-only definitions
here, since the zoo does not train them. Input sizes: the one each network's MAC count in the paper's
Table 3 implies (227 for AlexNet and SqueezeNet v1.0, as their Caffe definitions; 224 for the others).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import UnknownModelError
from toolchain.simulate.layers import ConvLayer, conv_output_size, fully_connected, layers_of_onnx, layers_of_torch

IMAGENET = "imagenet"
IMAGENET_CLASSES = 1000
# ImageNet inputs of the zoo's SqueezeNet builders (their paper-era Caffe definitions: 227 for v1.0; v1.1's
# 352M MACs in Table 3 are its 224 input)
SQUEEZENET_IMAGENET_INPUT = {"squeezenet-v1.0": 227, "squeezenet-v1.1": 224}


@dataclass(frozen=True)
class Network:
    """A network as the simulator sees it: its layers and where their shapes came from."""

    name: str
    source: str  # "zoo", "reference" or "onnx"
    configuration: str
    input_shape: tuple[int, int, int]
    layers: tuple[ConvLayer, ...]
    note: str = ""

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def weights(self) -> int:
        return sum(layer.weights for layer in self.layers)


class _ShapeBuilder:
    """Walks a feature map through a shape-only network definition, collecting its layers."""

    def __init__(self, channels: int, size: int) -> None:
        self.channels, self.height, self.width = channels, size, size
        self.layers: list[ConvLayer] = []

    def conv(self, name: str, out_channels: int, kernel: int, stride: int = 1, padding: int | None = None,
             groups: int = 1) -> "_ShapeBuilder":
        pad = kernel // 2 if padding is None else padding
        out = (conv_output_size(self.height, kernel, stride, pad), conv_output_size(self.width, kernel, stride, pad))
        self.layers.append(ConvLayer(name=name, in_channels=self.channels, out_channels=out_channels,
                                     kernel=(kernel, kernel), stride=(stride, stride),
                                     in_size=(self.height, self.width), out_size=out, groups=groups))
        self.channels, (self.height, self.width) = out_channels, out
        return self

    def pool(self, kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> "_ShapeBuilder":
        self.height = conv_output_size(self.height, kernel, stride, padding, ceil_mode)
        self.width = conv_output_size(self.width, kernel, stride, padding, ceil_mode)
        return self

    def fc(self, name: str, out_features: int) -> "_ShapeBuilder":
        self.layers.append(fully_connected(name, self.channels * self.height * self.width, out_features))
        self.channels, self.height, self.width = out_features, 1, 1
        return self


def _alexnet() -> tuple[list[ConvLayer], int]:
    # Krizhevsky et al. 2012 as Caffe's bvlc_alexnet: 227 input, conv2/4/5 in two groups, 3x3/2 max-pools
    net = _ShapeBuilder(3, 227).conv("conv1", 96, 11, 4, padding=0).pool(3, 2)
    net.conv("conv2", 256, 5, groups=2).pool(3, 2)
    net.conv("conv3", 384, 3).conv("conv4", 384, 3, groups=2).conv("conv5", 256, 3, groups=2).pool(3, 2)
    net.fc("fc6", 4096).fc("fc7", 4096).fc("fc8", IMAGENET_CLASSES)
    return net.layers, 227


def _mobilenet_v1() -> tuple[list[ConvLayer], int]:
    # Howard et al. 2017, Table 1 (width 1.0, 224): 3x3/2 stem, 13 depthwise-separable pairs, pool, fc
    net = _ShapeBuilder(3, 224).conv("conv1", 32, 3, 2)
    pairs = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]
    for index, (out_channels, stride) in enumerate(pairs, start=2):
        net.conv(f"conv{index}_dw", net.channels, 3, stride, groups=net.channels)
        net.conv(f"conv{index}_pw", out_channels, 1)
    net.pool(net.height, 1).fc("fc", IMAGENET_CLASSES)
    return net.layers, 224


def _tiny_darknet() -> tuple[list[ConvLayer], int]:
    # Redmon's Darknet tiny.cfg: 3x3 and 1x1 convs, 2x2/2 max-pools, a 1x1 conv to the classes, global pooling
    net = _ShapeBuilder(3, 224).conv("conv1", 16, 3).pool(2, 2).conv("conv2", 32, 3).pool(2, 2)
    index = 3
    for squeeze, expand, pools in ((16, 128, True), (32, 256, True), (64, 512, False)):
        for _ in range(2):
            net.conv(f"conv{index}", squeeze, 1).conv(f"conv{index + 1}", expand, 3)
            index += 2
        if pools:
            net.pool(2, 2)
    net.conv(f"conv{index}", 128, 1).conv(f"conv{index + 1}", IMAGENET_CLASSES, 1)
    return net.layers, 224


REFERENCE_NETWORKS = {
    "alexnet": (_alexnet, "AlexNet (Caffe bvlc_alexnet), shape-only definition"),
    "mobilenet-v1": (_mobilenet_v1, "MobileNet v1 1.0-224 (Howard et al. 2017, Table 1), shape-only definition"),
    "tiny-darknet": (_tiny_darknet, "Tiny Darknet (Darknet tiny.cfg), shape-only definition"),
}


def reference_network(name: str) -> Network:
    """One of the paper's comparison networks that the zoo does not build, in its ImageNet shapes."""
    build, note = REFERENCE_NETWORKS[name]
    layers, size = build()
    return Network(name=name, source="reference", configuration=IMAGENET, input_shape=(3, size, size),
                   layers=tuple(layers), note=note)


def zoo_network(name: str, configuration: str | None = None) -> Network:
    """A zoo model's (or a reference network's) layers: its own configuration, or the paper's ImageNet shapes.

    CIFAR configurations run at 32x32 with 10 classes; ImageNet ones with 1000 classes at the paper's inputs.
    """
    from toolchain.models import resolve

    key = name.strip().lower()
    if key in REFERENCE_NETWORKS:
        if configuration not in (None, IMAGENET):
            raise UnknownModelError(f"{key} is defined in its ImageNet shapes only",
                                    "drop --configuration or use --configuration imagenet")
        return reference_network(key)
    if key in SQUEEZENET_IMAGENET_INPUT and configuration == IMAGENET:
        spec = resolve(key)
        size, note = SQUEEZENET_IMAGENET_INPUT[key], "the zoo's SqueezeNet builder with 1000 classes"
    else:
        try:
            spec = resolve(key, configuration)
        except UnknownModelError as error:
            hint = resolve_reference_hint(key)
            if hint is None:
                raise
            raise UnknownModelError(error.message, hint) from None
        size, note = spec.input_size, spec.description.split(".")[0]
    classes = IMAGENET_CLASSES if (configuration or spec.configuration) == IMAGENET else 10
    model = spec.build(num_classes=classes)
    layers = layers_of_torch(model, (3, size, size))
    return Network(name=spec.name, source="zoo", configuration=configuration or spec.configuration,
                   input_shape=(3, size, size), layers=tuple(layers), note=note)


def resolve_reference_hint(key: str) -> str | None:
    """A hint naming the reference networks when a name looks like one of them."""
    import difflib

    close = difflib.get_close_matches(key, list(REFERENCE_NETWORKS), n=2, cutoff=0.6)
    return f"did you mean {', '.join(close)}? (the paper's reference networks)" if close else None


def onnx_network(path: Path) -> Network:
    """An ONNX classifier's layers with the shapes ONNX shape inference gives at its own input size."""
    layers, input_shape = layers_of_onnx(path)
    return Network(name=path.name, source="onnx", configuration="onnx", input_shape=input_shape,
                   layers=tuple(layers), note=str(path))
