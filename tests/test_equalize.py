"""Activation equalization (issue: every paper model ships in INT8): exact, and what it may not touch.

`toolchain.graph.equalize` divides each activation channel where a conv writes it and multiplies it back
where a conv or the classifier reads it. Checked on ONNX Runtime: exact up to float rounding on
ill-conditioned random nets of every HPS depth (after the batchnorm pass, as the gate sees them), groups
through Add and BatchNormalization, groups it must leave alone (an ELU, a graph output, a Concat, a grouped
conv), and the channel ranges it leaves on a checkpoint built to spread them.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.test_batchnorm_rescale import HPS_DEPTHS, _exported, assert_exact_up_to_rounding, ill_conditioned
from toolchain.data import load_dataset
from toolchain.evaluators.accuracy import onnx_logits
from toolchain.graph.batchnorm import rewrite_batchnorm_after_relu
from toolchain.graph.equalize import channel_ranges, equalization_groups, equalize_activations, equalize_file
from toolchain.models import create_model


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_dataset("fashion-mnist", "test", limit=96).normalized_arrays()[0]


def _equalized(model: onnx.ModelProto, images: np.ndarray, tmp_path):
    before, after = tmp_path / "before.onnx", tmp_path / "after.onnx"
    onnx.save(model, str(before))
    done = equalize_file(before, after, images, model.graph.input[0].name)
    onnx.checker.check_model(onnx.load(str(after)))
    return done, onnx_logits(before, images), onnx_logits(after, images)


@pytest.mark.parametrize("depth", HPS_DEPTHS)
def test_equalization_is_exact_on_an_ill_conditioned_hps_net_of_every_depth(depth, images, tmp_path):
    torch.manual_seed(0)
    model = ill_conditioned(create_model(depth, num_classes=10, in_channels=1), torch.from_numpy(images))
    exported = _exported(model, images, tmp_path / "model.onnx")
    rewrite_batchnorm_after_relu(exported)
    done, before, after = _equalized(exported, images, tmp_path)
    # every group: the units' chains and each stage's residual stream, through its Adds and BNs
    assert done.skipped == 0 and done.groups >= len([n for n in exported.graph.node if n.op_type == "Add"])
    assert done.channels > 0
    assert_exact_up_to_rounding(model, images, before, after)


def test_an_elu_net_is_left_where_elu_reads(images, tmp_path):
    """ELU is not positively homogeneous: a factor cannot pass it (Shallow SqueezeNext)."""
    torch.manual_seed(0)
    model = create_model("shallow-06-0.575x", num_classes=10, in_channels=1).eval()
    exported = _exported(model, images, tmp_path / "model.onnx")
    groups = equalization_groups(exported)
    elu_inputs = {node.input[0] for node in exported.graph.node if node.op_type == "Elu"}
    assert elu_inputs and all(not group.ok for group in groups if group.tensors & elu_inputs)
    done, before, after = _equalized(exported, images, tmp_path)
    assert done.skipped > 0
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())


def _conv(name: str, source: str, cin: int, cout: int, rng: np.random.Generator, group: int = 1, pads: int = 0):
    weight = numpy_helper.from_array(rng.normal(size=(cout, cin // group, 3, 3)).astype(np.float32), f"{name}.w")
    bias = numpy_helper.from_array(rng.normal(size=cout).astype(np.float32), f"{name}.b")
    node = helper.make_node("Conv", [source, weight.name, bias.name], [name], name=name, group=group,
                            pads=[pads] * 4)
    return node, [weight, bias]


def _graph(nodes, initializers, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 9, 9])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _spread_channels(model: onnx.ModelProto, conv: str, factors: np.ndarray) -> None:
    """Scale one conv's output channels (its weights and bias) by ``factors``: a tensor whose channels differ."""
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    for name, shape in ((f"{conv}.w", (-1, 1, 1, 1)), (f"{conv}.b", (-1,))):
        value = numpy_helper.to_array(constants[name]) * factors.reshape(shape)
        constants[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def test_a_residual_group_through_batchnorm_and_add_is_exact_and_leaves_a_graph_output_alone():
    rng = np.random.default_rng(0)
    a, a_init = _conv("a", "x", 4, 8, rng, pads=1)
    b, b_init = _conv("b", "x", 4, 8, rng, pads=1)
    scale = np.where(rng.random(8) < 0.5, -1.0, 1.0).astype(np.float32)  # the sign a rescaled BN keeps
    bn_init = [numpy_helper.from_array(v.astype(np.float32), n) for v, n in
               ((scale, "bn.s"), (rng.normal(size=8), "bn.t"), (rng.normal(size=8), "bn.m"), (np.ones(8), "bn.v"))]
    nodes = [a, helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("BatchNormalization", ["ra", "bn.s", "bn.t", "bn.m", "bn.v"], ["na"], epsilon=0.0),
             b, helper.make_node("Add", ["na", "b"], ["sum"]), helper.make_node("Relu", ["sum"], ["rs"])]
    head, head_init = _conv("head", "rs", 8, 3, rng, pads=1)
    side, side_init = _conv("side", "x", 4, 5, rng)
    model = _graph(nodes + [head, side], a_init + b_init + bn_init + head_init + side_init, ["head", "side"])
    _spread_channels(model, "a", np.logspace(0, 3, 8))
    _spread_channels(model, "b", np.logspace(0, 3, 8))
    x = rng.normal(size=(2, 4, 9, 9)).astype(np.float32)
    expected = _run(model, x)
    groups = {frozenset(group.tensors): group for group in equalization_groups(model)}
    residual = groups[frozenset({"a", "ra", "na", "b", "sum", "rs"})]
    assert residual.ok and {node.name for node in residual.writers} == {"a", "b"}
    assert [node.name for node, _ in residual.readers] == ["head"] and len(residual.batchnorms) == 1
    assert not groups[frozenset({"side"})].ok  # a graph output: nothing reads it back
    ranges = channel_ranges(model, x, "x", sorted(residual.quantized))
    done = equalize_activations(model, ranges)
    assert (done.groups, done.skipped) == (1, 2)  # the two heads' outputs are graph outputs
    for value, reference in zip(_run(model, x), expected, strict=True):
        np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    after = channel_ranges(model, x, "x", ["rs"])["rs"]
    assert after.max() / after.min() < ranges["rs"].max() / ranges["rs"].min() / 10  # 1000x spread, mostly gone


@pytest.mark.parametrize("reader", ["concat", "grouped"])
def test_a_group_read_by_a_concat_or_a_grouped_conv_is_left_alone(reader):
    rng = np.random.default_rng(1)
    a, a_init = _conv("a", "x", 4, 8, rng)
    nodes = [a, helper.make_node("Relu", ["a"], ["ra"])]
    if reader == "concat":
        head, init = _conv("head", "cat", 16, 3, rng)
        nodes += [helper.make_node("Concat", ["ra", "ra"], ["cat"], axis=1), head]
    else:
        head, init = _conv("head", "ra", 8, 8, rng, group=4)
        nodes += [head]
    model = _graph(nodes, a_init + init, ["head"])
    groups = [group for group in equalization_groups(model) if "ra" in group.tensors]
    assert len(groups) == 1 and not groups[0].ok
    assert equalize_activations(model, {"ra": np.logspace(0, 3, 8)}).groups == 0


def test_equalization_evens_out_a_spread_the_float_network_hides(tiny_hps, images, tmp_path):
    """break_int8 spreads one tensor's channels 10**4-fold in the checkpoint; after the batchnorm pass INT8 sees
    that spread, and after equalization it is gone (to within the trained net's own spread)."""
    from tests.fixtures.pipeline import break_int8
    from toolchain.training.checkpoints import load_checkpoint

    broken = load_checkpoint(break_int8(tiny_hps.checkpoint, tmp_path / "broken.pt", decades=4.0)).model
    exported = _exported(broken, images, tmp_path / "model.onnx")
    rewrite_batchnorm_after_relu(exported)
    name = next(node.output[0] for node in exported.graph.node
                if node.op_type == "Relu" and "stages.0.0/body/squeeze2" in node.name)
    onnx.save(exported, str(tmp_path / "before.onnx"))
    equalize_file(tmp_path / "before.onnx", tmp_path / "after.onnx", images, "input")

    def spread(path) -> float:
        ranges = channel_ranges(onnx.load(str(path)), images, "input", [name])[name]
        live = ranges[ranges > 0]
        return float(live.max() / live.min())

    assert spread(tmp_path / "before.onnx") > 1e3
    assert spread(tmp_path / "after.onnx") < 30, spread(tmp_path / "after.onnx")
