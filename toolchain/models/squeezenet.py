"""SqueezeNet v1.0 / v1.1 (Iandola et al. 2016) with a CIFAR head, and the Squeezed CNN.

The fire module is the SqueezeNet paper's: a 1x1 squeeze layer s1x1, then two expand layers
e1x1 and e3x3 whose outputs are concatenated, each followed by ReLU. The "CIFAR head" keeps the
paper's classifier (dropout 0.5, 1x1 conv to the classes, ReLU, global average pooling) with the
class count of the dataset. On 32x32 inputs the stems and ceil-mode max-pools still reduce the map
to 1x1 before the classifier; with 10 classes the state_dict sizes (2.97 / 2.92 MB) match the
papers' 3.013 / 2.961 MB within pickling overhead.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from toolchain.models.registry import FixedModel, ModelSpec, register_model


class Fire(nn.Module):
    """squeeze 1x1 -> (expand 1x1 | expand 3x3) -> concat, ReLU after each conv (optionally BN)."""

    def __init__(self, cin: int, squeeze: int, expand1x1: int, expand3x3: int,
                 batch_norm: bool = False) -> None:
        super().__init__()
        self.squeeze = _conv(cin, squeeze, 1, batch_norm)
        self.expand1x1 = _conv(squeeze, expand1x1, 1, batch_norm)
        self.expand3x3 = _conv(squeeze, expand3x3, 3, batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], 1)


def _conv(cin: int, cout: int, kernel: int, batch_norm: bool, stride: int = 1) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = [
        ("conv", nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2 if kernel == 3 else 0))]
    if batch_norm:
        layers.append(("bn", nn.BatchNorm2d(cout)))
    layers.append(("act", nn.ReLU(inplace=True)))
    return nn.Sequential(OrderedDict(layers))


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


class SqueezeNet(nn.Module):
    """Feature extractor of fire modules plus the convolutional classifier."""

    def __init__(self, features: nn.Sequential, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        final = nn.Conv2d(512, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(OrderedDict([
            ("dropout", nn.Dropout(p=dropout)), ("conv", final), ("act", nn.ReLU(inplace=True)),
            ("pool", nn.AdaptiveAvgPool2d(1))]))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if module is final:
                    nn.init.normal_(module.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def _squeezenet_v1_0(spec: ModelSpec, num_classes: int, in_channels: int) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(in_channels, 96, kernel_size=7, stride=2), nn.ReLU(inplace=True), _pool(),
        Fire(96, 16, 64, 64), Fire(128, 16, 64, 64), Fire(128, 32, 128, 128), _pool(),
        Fire(256, 32, 128, 128), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
        Fire(384, 64, 256, 256), _pool(),
        Fire(512, 64, 256, 256))
    return SqueezeNet(features, num_classes)


def _squeezenet_v1_1(spec: ModelSpec, num_classes: int, in_channels: int) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=3, stride=2), nn.ReLU(inplace=True), _pool(),
        Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), _pool(),
        Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), _pool(),
        Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256),
        Fire(512, 64, 256, 256))
    return SqueezeNet(features, num_classes)


def _squeezed_cnn(spec: ModelSpec, num_classes: int, in_channels: int) -> nn.Module:
    features = nn.Sequential(
        _conv(in_channels, 64, 3, batch_norm=True), _pool(),
        Fire(64, 16, 64, 64, True), Fire(128, 16, 64, 64, True), _pool(),
        Fire(128, 32, 128, 128, True), Fire(256, 32, 128, 128, True), _pool(),
        Fire(256, 48, 192, 192, True), Fire(384, 48, 192, 192, True),
        Fire(384, 64, 256, 256, True), Fire(512, 64, 256, 256, True))
    return SqueezeNet(features, num_classes)


register_model(FixedModel(
    name="squeezenet-v1.0", builder=_squeezenet_v1_0,
    description="SqueezeNet v1.0: 7x7/2 stem (96), fire2-9, max-pools after conv1, fire4, fire8."))
register_model(FixedModel(
    name="squeezenet-v1.1", builder=_squeezenet_v1_1,
    description="SqueezeNet v1.1: 3x3/2 stem (64), fire2-9, max-pools after conv1, fire3, fire5."))
register_model(FixedModel(
    name="squeezed-cnn", builder=_squeezed_cnn,
    description=(
        "Squeezed CNN (Pathak & El-Sharkawy 2019; HPS paper Table 4): a SqueezeNet-based CNN "
        "architecturally compressed for CIFAR-10 and deployed on the Bluebox 2.0. The papers give "
        "only that description, so we chose: SqueezeNet v1.1's fire layout with a 3x3 stride-1 "
        "stem for 32x32 inputs (no early down-sampling) and BatchNorm after every conv. The "
        "paper's 12.9 MB is a checkpoint format we cannot reproduce from its description."),
))
