"""Equalize activation channels before INT8: move each channel's range into the weights that read it, exactly.

INT8 quantizes an activation tensor with one scale for all its channels. In a paper-order HPS net
(conv -> ReLU -> BN) trained a few epochs, the channels of one tensor differ in range by up to ~700x
(BN gammas drift freely), so with one scale about half of them fall below 4 quantization steps and are
lost. Measured on the papers'-recipe hps-21-1x-v3 checkpoint: 3,869 channels over the graph.

Positive per-channel factors commute with everything between the convs that write a tensor and the convs
that read it: ReLU, max/average pooling, Add (when every operand carries the same factors), and a
BatchNormalization once its mean and shift are divided too. So a channel c can be divided by s_c where it is
written (the producing conv's output channel c: weights and bias) and multiplied back where it is read (the
consuming conv's input channel c, or the Gemm's row after the pooling): the float function is unchanged up
to rounding, and the zero padding of a padded conv stays zero.

Choosing ``s_c = a_c**alpha / w_c**(1 - alpha)`` (SmoothQuant's migration; Nagel et al.'s cross-layer
equalization is alpha 0.5 on weight ranges alone), with ``a_c`` the channel's share of the tensor's range on
the calibration images and ``w_c`` the largest weight reading it, balances the activation's one scale against
the consumer's per-output-channel weight scales. The producer's weights are quantized per output channel, so
dividing an output channel costs them nothing.

Tensors tied by Add or pass-through ops form one group with one factor per channel (a residual stream: the
block outputs, the Adds and the convs on both sides). A group with any other reader or writer (a graph output,
Concat, a constant operand, a grouped conv) is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from toolchain.graph.batchnorm import _attributes, _consumers, _producers, _set_input_constant

# ops through which a per-channel positive factor passes unchanged (input 0 -> output 0)
_PASS_THROUGH = {"Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Identity", "Dropout"}
# the factors are clamped to this span around 1 (a channel that never fires keeps 1)
_LIMIT = 1e4
# SmoothQuant's default migration strength: the activation's and the weights' ranges meet halfway (in log scale)
EQUALIZE_ALPHA = 0.5
# images per ORT run while measuring the channel ranges
RANGE_BATCH = 32


@dataclass
class _Group:
    tensors: set[str] = field(default_factory=set)
    writers: list[onnx.NodeProto] = field(default_factory=list)  # Convs: output channels divided
    batchnorms: list[onnx.NodeProto] = field(default_factory=list)  # mean and shift divided
    readers: list[tuple[onnx.NodeProto, int]] = field(default_factory=list)  # (Conv | Gemm, input axis of channels)
    quantized: set[str] = field(default_factory=set)  # the tensors INT8 stores (not a conv output only a ReLU reads)
    ok: bool = True


@dataclass(frozen=True)
class Equalization:
    """What `equalize_activations` did."""

    groups: int  # channel groups rescaled
    channels: int  # channels given a factor other than 1
    skipped: int  # groups left as they were (a reader or writer the factors cannot pass)

    def to_dict(self) -> dict[str, int]:
        return {"groups": self.groups, "channels": self.channels, "groups_skipped": self.skipped}


def equalize_file(source: Path, destination: Path, images: np.ndarray, input_name: str,
                  alpha: float = EQUALIZE_ALPHA) -> Equalization:
    """Equalize the model at ``source`` with channel ranges measured on ``images``; write it to ``destination``."""
    model = onnx.load(str(source))
    names = sorted({name for group in equalization_groups(model) if group.ok for name in group.quantized})
    ranges = channel_ranges(model, images, input_name, names, str(source)) if names else {}
    done = equalize_activations(model, ranges, alpha)
    onnx.save(model, str(destination))
    return done


def channel_ranges(model: onnx.ModelProto, images: np.ndarray, input_name: str, names: list[str],
                   label: str = "the model") -> dict[str, np.ndarray]:
    """Per tensor in ``names`` (NCHW or NC), each channel's peak |value| per image, averaged over ``images``.

    The mean of the per-image peaks, not the peak over all images: the deep HPS nets' activations have rare
    per-image spikes 10-100x the typical peak (measured on the papers'-recipe hps-21-1x-v3), which the tensor's
    percentile calibration clips anyway; a factor chosen from a spike would shrink the channel for nothing.
    """
    import onnxruntime as ort

    from toolchain.quantization.ort import ort_failure, quiet_ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for name in names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sums: dict[str, np.ndarray] = {}
    try:
        with quiet_ort():
            session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
            for start in range(0, len(images), RANGE_BATCH):
                batch = np.ascontiguousarray(images[start:start + RANGE_BATCH], dtype=np.float32)
                for name, value in zip(names, session.run(names, {input_name: batch})):
                    if value.ndim not in (2, 4):
                        continue
                    peaks = np.abs(value).max(axis=(2, 3)) if value.ndim == 4 else np.abs(value)
                    total = peaks.astype(np.float64).sum(axis=0)
                    sums[name] = total if name not in sums else sums[name] + total
    except Exception as exc:  # ORT raises assorted errors on graphs it cannot run
        raise ort_failure("activation equalization (measuring channel ranges)", exc, label) from None
    return {name: total / len(images) for name, total in sums.items()}


def equalization_groups(model: onnx.ModelProto) -> list[_Group]:
    """The activation tensors tied together by pass-through ops and Adds, with their writers and readers."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    consumers, producers = _consumers(graph), _producers(graph)
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        parent.setdefault(name, name)
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    def tied(node: onnx.NodeProto) -> list[str]:
        """The activation tensors ``node`` ties to one factor set (inputs and output), or []."""
        if node.op_type in _PASS_THROUGH or (node.op_type == "Flatten" and _flattens_pooled(node, producers)):
            return [node.input[0], node.output[0]]
        if node.op_type == "BatchNormalization" and len(node.output) == 1 and all(
                name in initializers for name in node.input[1:5]):
            return [node.input[0], node.output[0]]
        if node.op_type == "Add" and len(node.input) == 2 and not any(name in initializers for name in node.input):
            return [node.input[0], node.input[1], node.output[0]]
        return []

    for node in graph.node:
        names = tied(node)
        for name in names[1:]:
            union(names[0], name)
    for node in graph.node:
        if node.op_type == "Conv":
            find(node.output[0])
    groups: dict[str, _Group] = {}
    for name in parent:
        groups.setdefault(find(name), _Group()).tensors.add(name)
    graph_io = {value.name for value in graph.input} | {value.name for value in graph.output}
    for group in groups.values():
        for name in group.tensors:
            if name in graph_io or name in initializers:
                group.ok = False
                continue
            writer = producers.get(name)
            if writer is None:
                group.ok = False
            elif writer.op_type == "Conv" and _constant_conv(writer, initializers):
                group.writers.append(writer)
            elif writer.op_type == "BatchNormalization" and tied(writer):
                group.batchnorms.append(writer)
            elif not tied(writer):
                group.ok = False
            readers = consumers.get(name, [])
            if not (writer is not None and writer.op_type == "Conv" and readers
                    and all(reader.op_type == "Relu" for reader in readers)):
                group.quantized.add(name)  # a conv's output a ReLU alone reads is fused into it
            for reader in readers:
                if tied(reader):
                    continue
                if reader.op_type == "Conv" and reader.input[0] == name and _constant_conv(reader, initializers) \
                        and _attributes(reader).get("group", 1) == 1 and name not in reader.input[1:]:
                    group.readers.append((reader, 1))
                elif reader.op_type == "Gemm" and reader.input[0] == name and reader.input[1] in initializers \
                        and not _attributes(reader).get("transA", 0) and name not in reader.input[1:]:
                    group.readers.append((reader, 1 if _attributes(reader).get("transB", 0) else 0))
                else:
                    group.ok = False
        group.ok = group.ok and bool(group.writers) and bool(group.readers)
    return list(groups.values())


def equalize_activations(model: onnx.ModelProto, ranges: dict[str, np.ndarray],
                         alpha: float = EQUALIZE_ALPHA) -> Equalization:
    """Rescale every equalizable group in place from ``ranges`` (tensor -> per-channel range on calibration)."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    done = channels = skipped = 0
    for group in equalization_groups(model):
        if not group.ok:
            skipped += 1
            continue
        factors = _factors(group, ranges, initializers, alpha)
        if factors is None:
            skipped += 1
            continue
        for writer in group.writers:
            _scale_axis(graph, initializers, writer, 1, 0, 1.0 / factors)
            if len(writer.input) > 2 and writer.input[2]:
                _scale_axis(graph, initializers, writer, 2, 0, 1.0 / factors)
        for batchnorm in group.batchnorms:
            _scale_axis(graph, initializers, batchnorm, 2, 0, 1.0 / factors)  # shift
            _scale_axis(graph, initializers, batchnorm, 3, 0, 1.0 / factors)  # mean
        for reader, axis in group.readers:
            _scale_axis(graph, initializers, reader, 1, axis, factors)
        done += 1
        channels += int(np.count_nonzero(factors != 1.0))
    return Equalization(done, channels, skipped)


def _factors(group: _Group, ranges: dict[str, np.ndarray], initializers: dict[str, onnx.TensorProto],
             alpha: float) -> np.ndarray | None:
    shares = []
    for name in group.quantized:
        if name in ranges:
            channel = np.asarray(ranges[name], dtype=np.float64)
            top = channel.max() if channel.size else 0.0
            if top > 0 and np.isfinite(top):
                shares.append(channel / top)
    if not shares or len({share.size for share in shares}) != 1:
        return None
    activation = np.max(shares, axis=0)
    weight = np.zeros_like(activation)
    for reader, axis in group.readers:
        array = np.abs(numpy_helper.to_array(initializers[reader.input[1]]).astype(np.float64))
        if array.shape[axis] != activation.size:
            return None
        per_channel = np.moveaxis(array, axis, 0).reshape(activation.size, -1).max(axis=1)
        weight = np.maximum(weight, per_channel / max(per_channel.max(), 1e-30))
    live = (activation > 0) & (weight > 0)
    factors = np.ones_like(activation)
    factors[live] = activation[live] ** alpha / weight[live] ** (1.0 - alpha)
    if not live.any():
        return None
    factors /= np.exp(np.mean(np.log(factors[live])))  # geometric mean 1: magnitudes stay where they were
    return np.clip(factors, 1.0 / _LIMIT, _LIMIT)


def _scale_axis(graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto], node: onnx.NodeProto,
                index: int, axis: int, factors: np.ndarray) -> None:
    array = numpy_helper.to_array(initializers[node.input[index]]).astype(np.float64)
    shape = [1] * array.ndim
    shape[axis] = factors.size
    _set_input_constant(graph, initializers, node, index, (array * factors.reshape(shape)).astype(np.float32))


def _constant_conv(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> bool:
    return len(node.input) > 1 and node.input[1] in initializers and (
        len(node.input) < 3 or not node.input[2] or node.input[2] in initializers)


def _flattens_pooled(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> bool:
    writer = producers.get(node.input[0])
    return writer is not None and writer.op_type in ("GlobalAveragePool", "GlobalMaxPool") \
        and _attributes(node).get("axis", 1) == 1
