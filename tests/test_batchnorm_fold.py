"""Folding the BatchNorm after a ReLU: exact where it happens, and it happens only where it is exact."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from toolchain.graph.batchnorm import fold_batchnorm_after_relu

CHANNELS = 6
RNG = np.random.default_rng(0)


def _tensor(name: str, *shape: int, low: float = -1.0, high: float = 1.0) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.uniform(low, high, shape).astype(np.float32), name)


def _batchnorm(name: str, source: str, gamma_low: float = 0.2) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """An inference BN with uneven statistics; ``gamma_low < 0`` gives some channels a negative scale."""
    gamma = np.linspace(gamma_low, 2.0, CHANNELS).astype(np.float32)
    parameters = [numpy_helper.from_array(gamma, f"{name}.gamma"), _tensor(f"{name}.beta", CHANNELS),
                  _tensor(f"{name}.mean", CHANNELS, low=0.0, high=2.0),
                  _tensor(f"{name}.var", CHANNELS, low=0.01, high=4.0)]
    node = helper.make_node("BatchNormalization", [source] + [p.name for p in parameters], [name], name=name,
                            epsilon=1e-3)
    return node, parameters


def _conv(name: str, source: str, kernel: int = 1, pads: int = 0, cin: int = CHANNELS, cout: int = CHANNELS,
          weight: str | None = None) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    weights = [] if weight else [_tensor(f"{name}.w", cout, cin, kernel, kernel)]
    bias = _tensor(f"{name}.b", cout)
    node = helper.make_node("Conv", [source, weight or f"{name}.w", bias.name], [name], name=name,
                            pads=[pads] * 4)
    return node, weights + [bias]


def _unit(source: str = "x", gamma_low: float = 0.2) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """conv -> ReLU -> BN, the HPS unit; its output is "bn"."""
    conv, conv_init = _conv("conv", source, kernel=3, pads=1, cin=3)
    bn, bn_init = _batchnorm("bn", "relu", gamma_low)
    return [conv, helper.make_node("Relu", ["conv"], ["relu"], name="relu"), bn], conv_init + bn_init


def _model(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], outputs: list[str]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "fold", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                             [2, 4] if name == "logits" else [2, CHANNELS, 8, 8])
                               for name in outputs],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)})


def _fold(model: onnx.ModelProto) -> tuple[int, onnx.ModelProto]:
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    count = fold_batchnorm_after_relu(folded)
    onnx.checker.check_model(folded)
    return count, folded


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    for expected, actual in zip(_run(before), _run(after), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def _op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def test_batchnorm_before_a_1x1_conv_is_folded_exactly_even_with_negative_scales():
    nodes, init = _unit(gamma_low=-1.0)
    head, head_init = _conv("head", "bn")
    model = _model(nodes + [head], init + head_init, ["head"])
    count, folded = _fold(model)
    assert count == 1 and "BatchNormalization" not in _op_types(folded)
    assert_same_outputs(model, folded)


def test_batchnorm_read_by_two_1x1_convs_sharing_weights_is_folded_into_both():
    nodes, init = _unit()
    first, first_init = _conv("first", "bn")
    second, second_init = _conv("second", "bn", weight="first.w")
    other, other_init = _conv("other", "x", cin=3, weight=None)
    shared_elsewhere = helper.make_node("Conv", ["first", "first.w"], ["again"], name="again")
    model = _model(nodes + [first, second, other, shared_elsewhere], init + first_init + second_init + other_init,
                   ["again", "second", "other"])
    count, folded = _fold(model)
    assert count == 1
    assert_same_outputs(model, folded)


def test_batchnorm_before_a_padded_conv_stays_because_the_padding_would_not_see_its_shift():
    nodes, init = _unit()
    head, head_init = _conv("head", "bn", kernel=3, pads=1)
    model = _model(nodes + [head], init + head_init, ["head"])
    count, folded = _fold(model)
    assert count == 0 and folded == model


@pytest.mark.parametrize("gamma_low, expected", [(0.2, 1), (-1.0, 0)], ids=["positive scales", "a negative scale"])
def test_batchnorm_before_a_residual_add_moves_its_shift_into_the_shortcut_conv(gamma_low, expected):
    nodes, init = _unit(gamma_low=gamma_low)
    shortcut, shortcut_init = _conv("shortcut", "x", cin=3)
    add = helper.make_node("Add", ["shortcut", "bn"], ["sum"], name="add")
    model = _model(nodes + [shortcut, add, helper.make_node("Relu", ["sum"], ["y"])], init + shortcut_init, ["y"])
    count, folded = _fold(model)
    assert count == expected  # a negative scale cannot cross the ReLU, and an Add has no weights to take the sign
    assert_same_outputs(model, folded)


@pytest.mark.parametrize("trans_b, alpha, beta, with_bias", [(1, 1.0, 1.0, True), (0, 0.5, 2.0, True),
                                                             (1, 2.0, 1.0, False)])
def test_batchnorm_before_pooling_and_the_classifier_is_folded_into_the_gemm(trans_b, alpha, beta, with_bias):
    nodes, init = _unit(gamma_low=-0.5)
    weight = _tensor("fc.w", 4, CHANNELS) if trans_b else _tensor("fc.w", CHANNELS, 4)
    extra = [_tensor("fc.b", 4)] if with_bias else []
    gemm = helper.make_node("Gemm", ["flat", "fc.w"] + [t.name for t in extra], ["logits"], transB=trans_b,
                            alpha=alpha, beta=beta)
    head = [helper.make_node("GlobalAveragePool", ["bn"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1), gemm]
    model = _model(nodes + head, init + [weight] + extra, ["logits"])
    count, folded = _fold(model)
    assert count == 1 and "BatchNormalization" not in _op_types(folded)
    assert_same_outputs(model, folded)


def test_nothing_is_folded_where_another_reader_or_the_graph_output_sees_the_tensors():
    nodes, init = _unit()
    head, head_init = _conv("head", "bn")
    as_output = _model(nodes + [head], init + head_init, ["head", "bn"])
    relu_read_elsewhere = _model(nodes + [head], init + head_init, ["head", "relu"])
    for model in (as_output, relu_read_elsewhere):
        count, folded = _fold(model)
        assert count == 0 and folded == model


def test_a_batchnorm_without_a_relu_before_it_is_left_to_onnxsim():
    conv, conv_init = _conv("conv", "x", cin=3)
    bn, bn_init = _batchnorm("bn", "conv")
    head, head_init = _conv("head", "bn")
    model = _model([conv, bn, head], conv_init + bn_init + head_init, ["head"])
    count, _ = _fold(model)
    assert count == 0
