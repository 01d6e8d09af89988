"""Fold the BatchNorm that HPS puts after its ReLU (conv -> ReLU -> BN) out of the graph, exactly.

onnxsim folds a BN into the conv right before it, which is all SqueezeNext needs. HPS puts the ReLU in
between, so every one of its BNs survives and INT8 keeps each in float between a dequantize/quantize pair
(hps-06-0.5x: 22 BNs, about a tenth of the INT8 file).

A BN is a per-channel ``s * x + t``. Since ``|s| * ReLU(z) = ReLU(|s| * z)``, the magnitude of the scale
moves back into the conv before the ReLU (its output channel c times |s_c|). The sign and the shift t
then move forward into what follows, where that is exact:
- an unpadded 1x1 conv: its input channel c times sign(s_c), its bias gains ``W @ t``;
- GlobalAveragePool (-> Flatten) -> Gemm: pooling is linear, so the same with ``alpha/beta * B t``;
- an Add whose other operand is a conv's own output, when no s_c is negative: that conv's bias gains t.
A BN feeding a padded conv stays, as ``sign * x + shift`` once its scale has moved back (the padding zeros
would not see the shift).

Folding the whole BN forward into a 1x1 conv would be exact too, but then the tensor INT8 quantizes with
one scale is the un-normalised ReLU output, whose channels differ in range by orders of magnitude:
measured on hps-06-0.5x, INT8 top-1 fell from 81.6 % to 22.8 %. Moving the scale back keeps the quantized
tensor normalised. ELU (Shallow SqueezeNext) is not positively homogeneous, so its BNs stay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper


# a running variance this small means the channel (almost) never fired in training: its scale is ~gamma/sqrt(eps)
DEAD_VARIANCE = 1e-12


@dataclass(frozen=True)
class BatchNormRewrite:
    """What `rewrite_batchnorm_after_relu` did to a graph."""

    folded: int  # BNs removed: |scale| into the conv before, sign and shift into what follows
    rescaled: int  # BNs kept as sign * x + shift: what follows cannot take the shift exactly
    dead_channels: int  # channels of those BNs whose running variance is ~0 (amplified ~gamma/sqrt(eps) if they fire)

    def to_dict(self) -> dict[str, int]:
        return {"batchnorm_folded": self.folded, "batchnorm_rescaled": self.rescaled,
                "dead_channels": self.dead_channels}


def fold_batchnorm_after_relu(model: onnx.ModelProto) -> int:
    """Remove each conv -> ReLU -> BN's BatchNormalization where that is exact; the rest untouched. How many."""
    return rewrite_batchnorm_after_relu(model, rescale_rest=False).folded


def rewrite_batchnorm_after_relu(model: onnx.ModelProto, rescale_rest: bool = True) -> BatchNormRewrite:
    """Fold each conv -> ReLU -> BN as the module docstring says; with ``rescale_rest``, rescale the others.

    A BN whose shift cannot move on still gives its |scale| to the conv before the ReLU and keeps only
    ``sign * (x - mean') + beta`` (see `_rescale`). A dead channel (running variance ~0, never active in
    training) keeps its scale in the BN: moved into the conv, its mean would cancel against a ~gamma/sqrt(eps)
    times larger value in float32; a BN with one is rescaled, not folded. Both rewrites are exact up to float
    rounding; afterwards no conv output carries a live channel's BN scale, so INT8 ranges stay normalised.
    """
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    protected = {output.name for output in graph.output}
    folded = rescaled = dead = 0
    for bn in [node for node in graph.node if node.op_type == "BatchNormalization"]:
        consumers, producers = _consumers(graph), _producers(graph)
        planned = _plan(bn, consumers, producers, initializers, protected)
        if planned is None:
            continue
        conv, scale, shift, variance, sinks = planned
        sign = np.where(scale < 0, -1.0, 1.0)
        dead_here = variance < DEAD_VARIANCE
        foldable = sinks is not None and not dead_here.any() and \
            not any(sink.in_axis is None and (sign < 0).any() for sink in sinks)
        if foldable:
            _scale_output_channels(graph, initializers, conv, np.abs(scale))
            for sink in sinks:  # type: ignore[union-attr]
                sink.absorb(graph, initializers, sign, shift)
            _bypass(graph, bn, consumers)
            folded += 1
        elif rescale_rest:
            moved = np.where(dead_here, 1.0, np.abs(scale))
            _scale_output_channels(graph, initializers, conv, moved)
            _rescale(graph, initializers, bn, moved)
            rescaled += 1
        else:
            continue
        dead += int(dead_here.sum())
    if folded:
        used = {name for node in graph.node for name in node.input}
        for tensor in [tensor for tensor in graph.initializer if tensor.name not in used]:
            graph.initializer.remove(tensor)
    return BatchNormRewrite(folded, rescaled, dead)


def _plan(bn: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]], producers: dict[str, onnx.NodeProto],
          initializers: dict[str, onnx.TensorProto], protected: set[str]
          ) -> tuple[onnx.NodeProto, np.ndarray, np.ndarray, np.ndarray, list["_ShiftSink"] | None] | None:
    """(conv, scale, shift, running variance, where the shift goes or None) of a conv -> ReLU -> ``bn``, else None."""
    affine = _batchnorm_affine(bn, initializers)
    if affine is None or bn.output[0] in protected or not consumers.get(bn.output[0]):
        return None
    conv = _conv_before_relu(bn, consumers, producers, initializers, protected)
    if conv is None:
        return None
    scale, shift = affine
    sinks = [_shift_sink(node, bn.output[0], len(shift), consumers, producers, initializers, protected)
             for node in consumers[bn.output[0]]]
    variance = numpy_helper.to_array(initializers[bn.input[4]]).astype(np.float64)
    return conv, scale, shift, variance, (None if any(sink is None for sink in sinks) else sinks)  # type: ignore[misc]


def _bypass(graph: onnx.GraphProto, bn: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]]) -> None:
    """Let the BN's readers read its input, and drop the BN."""
    for node in consumers[bn.output[0]]:
        for index, name in enumerate(node.input):
            if name == bn.output[0]:
                node.input[index] = bn.input[0]
    graph.node.remove(bn)
    for info in [info for info in graph.value_info if info.name == bn.output[0]]:
        graph.value_info.remove(info)


def _rescale(graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto], bn: onnx.NodeProto,
             moved: np.ndarray) -> None:
    """Make ``bn`` read an input ``moved`` times larger per channel and compute what it computed.

    gamma / sqrt(var + eps) becomes scale / moved (the sign where all of |scale| moved) with var + eps = 1,
    the mean grows by ``moved`` and beta stays: the mean is still taken off before scaling, so a channel
    whose scale did not move (a dead one) rounds exactly as before.
    """
    attributes = _attributes(bn)
    epsilon = np.float32(attributes.get("epsilon", 1e-5))
    gamma, beta, mean, var = (numpy_helper.to_array(initializers[name]).astype(np.float64) for name in bn.input[1:])
    scale = gamma / np.sqrt(var + attributes.get("epsilon", 1e-5))
    live = moved == np.abs(scale)  # all of |scale| moved (0 included): the sign is left
    ratio = np.where(live, np.where(scale < 0, -1.0, 1.0), scale / np.where(live, 1.0, moved))
    variance = np.full(len(moved), np.float32(1.0) - epsilon, dtype=np.float32)
    for index, value in ((1, ratio), (2, beta), (3, mean * moved), (4, variance)):
        _set_input_constant(graph, initializers, bn, index, np.asarray(value, dtype=np.float32))


@dataclass(frozen=True)
class _ShiftSink:
    """A node that absorbs a per-channel ``sign * x + t`` of its input: W *= sign, bias += factor * W t; or += t."""

    node: onnx.NodeProto
    in_axis: int | None  # the weight's axis over the shifted channels; None: the shift adds to the bias itself
    factor: float = 1.0

    def absorb(self, graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto], sign: np.ndarray,
               shift: np.ndarray) -> None:
        if self.in_axis is None:
            change = shift
        else:
            weight = numpy_helper.to_array(initializers[self.node.input[1]]).astype(np.float64)
            out_axis = 1 - self.in_axis
            rows = np.moveaxis(weight, (out_axis, self.in_axis), (0, 1)).reshape(weight.shape[out_axis], len(shift))
            change = self.factor * (rows @ shift)
            if (sign < 0).any():
                shape = [1] * weight.ndim
                shape[self.in_axis] = len(sign)
                signed = (weight * sign.reshape(shape)).astype(np.float32)
                _set_input_constant(graph, initializers, self.node, 1, signed)
        if len(self.node.input) > 2 and self.node.input[2]:
            bias = numpy_helper.to_array(initializers[self.node.input[2]]).astype(np.float64)
            change = bias + change.reshape(bias.shape)
        _set_input_constant(graph, initializers, self.node, 2, change.astype(np.float32))


def _batchnorm_affine(bn: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per channel of an inference-mode BN with constant float32 parameters, else None."""
    attributes = _attributes(bn)
    if attributes.get("training_mode", 0) or len(bn.output) != 1 or len(bn.input) != 5:
        return None
    tensors = [initializers.get(name) for name in bn.input[1:]]
    if any(tensor is None or tensor.data_type != onnx.TensorProto.FLOAT for tensor in tensors):
        return None
    gamma, beta, mean, var = (numpy_helper.to_array(tensor).astype(np.float64) for tensor in tensors)
    scale = gamma / np.sqrt(var + attributes.get("epsilon", 1e-5))
    return scale, beta - mean * scale


def _conv_before_relu(bn: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]],
                      producers: dict[str, onnx.NodeProto], initializers: dict[str, onnx.TensorProto],
                      protected: set[str]) -> onnx.NodeProto | None:
    """The conv of conv -> ReLU -> ``bn`` when nothing else reads the conv's or the ReLU's output."""
    relu = producers.get(bn.input[0])
    if relu is None or relu.op_type != "Relu" or _only_reader(relu.output[0], consumers, protected) is not bn:
        return None
    conv = producers.get(relu.input[0])
    if conv is None or conv.op_type != "Conv" or _only_reader(conv.output[0], consumers, protected) is not relu:
        return None
    if not (_float_constant(conv, initializers, 1) and _optional_constant(conv, initializers, 2)):
        return None
    return conv


def _shift_sink(node: onnx.NodeProto, shifted: str, channels: int, consumers: dict[str, list[onnx.NodeProto]],
                producers: dict[str, onnx.NodeProto], initializers: dict[str, onnx.TensorProto],
                protected: set[str]) -> _ShiftSink | None:
    """Where the shift of tensor ``shifted`` (read by ``node``) can go exactly, or None."""
    if node.op_type == "Conv":
        attributes = _attributes(node)
        if list(node.input).count(shifted) != 1 or node.input[0] != shifted or \
                not (_float_constant(node, initializers, 1) and _optional_constant(node, initializers, 2)):
            return None
        unpadded = not any(attributes.get("pads", [])) and attributes.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
        one_by_one = all(size == 1 for size in initializers[node.input[1]].dims[2:])
        return _ShiftSink(node, in_axis=1) if attributes.get("group", 1) == 1 and unpadded and one_by_one else None
    if node.op_type == "Add" and len(node.input) == 2 and list(node.input).count(shifted) == 1:
        other = producers.get(node.input[1] if node.input[0] == shifted else node.input[0])
        if other is None or other.op_type != "Conv" or _only_reader(other.output[0], consumers, protected) is not node:
            return None
        if not (_float_constant(other, initializers, 1) and _optional_constant(other, initializers, 2)) or \
                initializers[other.input[1]].dims[0] != channels:
            return None
        return _ShiftSink(other, in_axis=None)
    if node.op_type == "GlobalAveragePool":
        return _pooled_gemm_sink(node, consumers, initializers, protected)
    return None


def _pooled_gemm_sink(pool: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]],
                      initializers: dict[str, onnx.TensorProto], protected: set[str]) -> _ShiftSink | None:
    reader = _only_reader(pool.output[0], consumers, protected)
    if reader is not None and reader.op_type == "Flatten" and _attributes(reader).get("axis", 1) == 1:
        reader = _only_reader(reader.output[0], consumers, protected)
    if reader is None or reader.op_type != "Gemm" or reader.input[1] == reader.input[0]:
        return None
    attributes = _attributes(reader)
    beta = attributes.get("beta", 1.0)
    if attributes.get("transA", 0) or beta == 0 or not _float_constant(reader, initializers, 1) or \
            not _optional_constant(reader, initializers, 2):
        return None
    in_axis = 1 if attributes.get("transB", 0) else 0
    if len(reader.input) > 2 and reader.input[2] and \
            int(np.prod(initializers[reader.input[2]].dims)) != initializers[reader.input[1]].dims[1 - in_axis]:
        return None  # a bias that also varies over the batch: keep it simple, keep the BN
    return _ShiftSink(reader, in_axis=in_axis, factor=attributes.get("alpha", 1.0) / beta)


def _scale_output_channels(graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto],
                           conv: onnx.NodeProto, scale: np.ndarray) -> None:
    weight = numpy_helper.to_array(initializers[conv.input[1]]).astype(np.float64)
    shape = (len(scale),) + (1,) * (weight.ndim - 1)
    _set_input_constant(graph, initializers, conv, 1, (weight * scale.reshape(shape)).astype(np.float32))
    if len(conv.input) > 2 and conv.input[2]:
        bias = numpy_helper.to_array(initializers[conv.input[2]]).astype(np.float64)
        _set_input_constant(graph, initializers, conv, 2, (bias * scale).astype(np.float32))


def _set_input_constant(graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto], node: onnx.NodeProto,
                        index: int, value: np.ndarray) -> None:
    """Give ``node`` a new constant at input ``index``; an initializer other nodes share is left to them."""
    while len(node.input) <= index:
        node.input.append("")
    name = node.input[index]
    if not name or sum(list(other.input).count(name) for other in graph.node) > 1:
        name = f"{node.name or node.output[0]}.folded_{index}"
        while name in initializers:
            name += "_"
        node.input[index] = name
    elif name in initializers:
        graph.initializer.remove(initializers[name])
    tensor = numpy_helper.from_array(value, name)
    graph.initializer.append(tensor)
    initializers[name] = tensor


def _only_reader(name: str, consumers: dict[str, list[onnx.NodeProto]], protected: set[str]) -> onnx.NodeProto | None:
    readers = consumers.get(name, [])
    return readers[0] if len(readers) == 1 and name not in protected else None


def _float_constant(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], index: int) -> bool:
    tensor = initializers.get(node.input[index]) if len(node.input) > index else None
    return tensor is not None and tensor.data_type == onnx.TensorProto.FLOAT


def _optional_constant(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], index: int) -> bool:
    return len(node.input) <= index or not node.input[index] or _float_constant(node, initializers, index)


def _attributes(node: onnx.NodeProto) -> dict:
    return {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in dict.fromkeys(node.input):
            found.setdefault(name, []).append(node)
    return found


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {name: node for node in graph.node for name in node.output}
