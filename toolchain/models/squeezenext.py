"""SqueezeNext and the networks built from its block: modified SqueezeNext, HPS, Shallow SqueezeNext.

All four share one builder (`_create`); a family is a `BlockStyle` plus its depth configurations.

The SqueezeNext block (Gholami et al. 2018, Fig. 1) as the papers' PyTorch code builds it:
1x1 (C_in -> C_in*r, carries the stride) -> 1x1 (-> C_in*r/2) -> 1x3 (-> C_in*r) -> 3x1 -> 1x1 (-> C_out),
with r = 1 when the block downsamples, 1/4 when it narrows (C_in > C_out), else 1/2; every conv has a
bias and is followed by BatchNorm and the activation; a projection shortcut (1x1 conv + BN) when the
stride or the channel count changes; the activation again after the addition. Stage widths are
32/64/128/256 times the width multiplier after a 64-channel stem, then a 1x1 "spatial resolution"
conv to 128 channels, global average pooling and a fully connected classifier. With these rules
`sqnxt-23-1x-v1` for 10 classes has 588,666 parameters, as the common public implementation.

HPS and Shallow SqueezeNext also build as ``-bnfirst`` variants (e.g. ``hps-21-1x-v3-bnfirst``): every
unit conv -> BN -> activation instead of the papers' conv -> activation -> BN. Same layers, same parameter
count; a departure from the papers, for quantization-friendly training: measured on hps-21-1x-v3 after the
same short training, the papers' order drifts to activations of 1e9 and loses 39 pp in INT8, the bn-first
order stays below 100 and loses none (see docs/quantization.md).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from toolchain.models.registry import DepthConfig, Family, ModelSpec, register_model

STAGE_CHANNELS = (32, 64, 128, 256)
STAGE_STRIDES = (1, 2, 2, 2)
STEM_CHANNELS = 64
HEAD_CHANNELS = 128


@dataclass(frozen=True)
class BlockStyle:
    """What distinguishes the families that share the SqueezeNext block."""

    activation: Callable[..., nn.Module]
    # HPS and Shallow SqueezeNext "sandwich" the activation between conv and BN.
    activation_before_bn: bool
    # Order of the separable pair: ((1, 3), (3, 1)) as SqueezeNext, or 3x1 first as HPS/Shallow.
    separable: tuple[tuple[int, int], tuple[int, int]]
    # The public SqueezeNext code applies the activation to the shortcut branch before the sum.
    activate_shortcut: bool
    dropout: float


def _channels(value: float) -> int:
    # int() truncation as the papers' code; at least one channel for very small widths.
    return max(1, int(value))


class ConvUnit(nn.Sequential):
    """conv -> BN -> act, or conv -> act -> BN (HPS/Shallow)."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], style: BlockStyle,
                 stride: int = 1) -> None:
        k = (kernel, kernel) if isinstance(kernel, int) else kernel
        padding = (k[0] // 2, k[1] // 2)
        conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=True)
        bn = nn.BatchNorm2d(cout)
        act = style.activation(inplace=True)
        order = [("conv", conv), ("act", act), ("bn", bn)] if style.activation_before_bn else \
            [("conv", conv), ("bn", bn), ("act", act)]
        super().__init__(OrderedDict(order))


class SqueezeNextBlock(nn.Module):
    """Two-stage squeeze, separable 3x3, expansion, residual sum."""

    def __init__(self, cin: int, cout: int, stride: int, style: BlockStyle) -> None:
        super().__init__()
        if stride == 2:
            reduction = 1.0
        elif cin > cout:
            reduction = 0.25
        else:
            reduction = 0.5
        mid = _channels(cin * reduction)
        squeezed = _channels(cin * reduction * 0.5)
        first, second = style.separable
        self.body = nn.Sequential(OrderedDict([
            ("squeeze1", ConvUnit(cin, mid, 1, style, stride=stride)),
            ("squeeze2", ConvUnit(mid, squeezed, 1, style)),
            ("separable1", ConvUnit(squeezed, mid, first, style)),
            ("separable2", ConvUnit(mid, mid, second, style)),
            ("expand", ConvUnit(mid, cout, 1, style)),
        ]))
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(cin, cout, 1, stride=stride, bias=True)),
                ("bn", nn.BatchNorm2d(cout)),
            ]))
        else:
            self.shortcut = nn.Identity()
        # not in place: for an identity shortcut the branch is the block's input itself
        self.shortcut_act = style.activation() if style.activate_shortcut else nn.Identity()
        self.act = style.activation(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut_act(self.shortcut(x)))


class SqueezeNextNet(nn.Module):
    """Stem, four stages of blocks, spatial-resolution 1x1 conv, pooling, (dropout), classifier."""

    def __init__(self, depth: tuple[int, ...], width: float, style: BlockStyle, num_classes: int,
                 in_channels: int, stem: nn.Module, stem_channels: int) -> None:
        super().__init__()
        self.stem = stem
        stages = []
        cin = stem_channels
        for blocks, base, stride in zip(depth, STAGE_CHANNELS, STAGE_STRIDES):
            cout = _channels(width * base)
            layers = []
            for index in range(blocks):
                layers.append(SqueezeNextBlock(cin, cout, stride if index == 0 else 1, style))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        head = _channels(width * HEAD_CHANNELS)
        self.spatial = ConvUnit(cin, head, 1, style)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(style.dropout) if style.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(head, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.spatial(self.stages(self.stem(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(self.dropout(x))


def _init_weights(model: nn.Module) -> None:
    # Xavier uniform as the SqueezeNext paper; gain sqrt(2) for the rectifiers (as the papers' code).
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_uniform_(module.weight, gain=2 ** 0.5)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)


def _stem(spec: ModelSpec, in_channels: int, channels: int, style: BlockStyle) -> nn.Module:
    if spec.configuration == "imagenet":
        # The SqueezeNext paper's ImageNet stem: 7x7/2 (5x5/2 from v2 on), then 3x3/2 max-pool.
        kernel = 7 if spec.version == 1 else 5
        return nn.Sequential(OrderedDict([
            ("unit", ConvUnit(in_channels, channels, kernel, style, stride=2)),
            ("pool", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
        ]))
    return ConvUnit(in_channels, channels, 3, style)


def _create(style: BlockStyle) -> Callable[..., nn.Module]:
    """The one builder every SqueezeNext-style family uses."""

    def build(spec: ModelSpec, num_classes: int, in_channels: int) -> nn.Module:
        assert spec.depth is not None and spec.width is not None
        unit_style = replace(style, activation_before_bn=False) if spec.bn_first else style
        stem_channels = _channels(spec.width * STEM_CHANNELS)
        stem = _stem(spec, in_channels, stem_channels, unit_style)
        return SqueezeNextNet(spec.depth, spec.width, unit_style, num_classes, in_channels, stem,
                              stem_channels)

    return build


def _configs(*rows: tuple[int, int, tuple[int, ...]] | tuple[int, int, tuple[int, ...], str]
             ) -> tuple[DepthConfig, ...]:
    return tuple(DepthConfig(*row) for row in rows)


SQUEEZENEXT = BlockStyle(activation=nn.ReLU, activation_before_bn=False,
                         separable=((1, 3), (3, 1)), activate_shortcut=True, dropout=0.0)
MODIFIED_SQUEEZENEXT = BlockStyle(activation=nn.ReLU, activation_before_bn=False,
                                  separable=((1, 3), (3, 1)), activate_shortcut=False, dropout=0.0)
HPS = BlockStyle(activation=nn.ReLU, activation_before_bn=True,
                 separable=((3, 1), (1, 3)), activate_shortcut=False, dropout=0.3)
SHALLOW = BlockStyle(activation=nn.ELU, activation_before_bn=True,
                     separable=((3, 1), (1, 3)), activate_shortcut=False, dropout=0.3)

register_model(Family(
    free_depth_stages=len(STAGE_CHANNELS),
    name="sqnxt",
    builder=_create(SQUEEZENEXT),
    description=(
        "SqueezeNext (Gholami et al. 2018). CIFAR configuration (default): 32x32 input, 3x3 "
        "stride-1 stem, no max-pool, so v2 (5x5 stem) equals v1 there. ImageNet configuration: "
        "224x224, 7x7/2 stem (5x5/2 from v2), 3x3/2 max-pool. As the public PyTorch code, the "
        "projection shortcut is also passed through ReLU before the sum."),
    configs=_configs((23, 1, (6, 6, 8, 1)), (23, 2, (6, 6, 8, 1)), (23, 3, (4, 8, 8, 1)),
                     (23, 4, (2, 10, 8, 1)), (23, 5, (2, 4, 14, 1))),
    default_versions={23: 1},
    configurations=("cifar", "imagenet"),
))

register_model(Family(
    free_depth_stages=len(STAGE_CHANNELS),
    name="modified-sqnxt",
    builder=_create(MODIFIED_SQUEEZENEXT),
    description=(
        "Modified SqueezeNext (HPS paper 2.2.1, Table 4): SqueezeNext-23 [6,6,8,1] re-built for "
        "PyTorch on CIFAR: 3x3 stride-1 stem and no max-pool, and the block reduced to "
        "conv -> BN -> ReLU (BN's affine replaces Caffe's separate scale layer). Where the paper is "
        "silent we chose: the shortcut branch is summed without its own ReLU (block structures 1 "
        "and 2 of its Fig. 4 show only the sum), the ReLU follows the sum."),
    configs=_configs((23, 1, (6, 6, 8, 1))),
))

register_model(Family(
    free_depth_stages=len(STAGE_CHANNELS),
    name="hps",
    builder=_create(HPS),
    description=(
        "High Performance SqueezeNext (Duggal & El-Sharkawy 2019/2022): SqueezeNext block with "
        "conv -> ReLU -> BN units, separable pair in the order 1x1, 1x1, 3x1, 1x3, 1x1 (the "
        "papers' module description), 3x3 stride-1 stem, no max-pool, adaptive average pooling and "
        "dropout before the classifier. The papers do not give the dropout probability: we use "
        "p=0.3, the value the same authors chose for Shallow SqueezeNext."),
    bn_first_variant=True,
    configs=_configs((6, 1, (1, 1, 1, 1)), (8, 1, (1, 2, 2, 1)), (9, 1, (1, 1, 4, 1)),
                     (14, 1, (1, 2, 8, 1)), (21, 2, (2, 2, 14, 1)), (21, 3, (2, 4, 12, 1)),
                     (23, 1, (2, 2, 16, 1)), (25, 1, (2, 4, 16, 1))),
))

register_model(Family(
    free_depth_stages=len(STAGE_CHANNELS),
    name="shallow",
    builder=_create(SHALLOW),
    description=(
        "Shallow SqueezeNext (Duggal & El-Sharkawy 2019/2020): the HPS layout with ELU in place "
        "of ReLU (conv -> ELU -> BN units) and dropout p=0.3 after average pooling, before the "
        "classifier. Depths from the papers' resolution-multiplier tables (06 1111, 08 1221, "
        "09 1141, 10 1331, 12 1441, 14 1281, 16 1661, 21 22141)."),
    bn_first_variant=True,
    configs=_configs((6, 1, (1, 1, 1, 1)), (8, 1, (1, 2, 2, 1)), (9, 1, (1, 1, 4, 1)),
                     (10, 1, (1, 3, 3, 1)), (12, 1, (1, 4, 4, 1)), (14, 1, (1, 2, 8, 1)),
                     (16, 1, (1, 6, 6, 1)), (21, 1, (2, 2, 14, 1))),
))


def activations_of(model: nn.Module) -> set[type]:
    """The activation module types a network uses (for tests and reports)."""
    return {type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.ELU))}

