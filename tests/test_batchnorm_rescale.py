"""Rescaling every BatchNorm after a ReLU (issue: every paper model ships in INT8): exact on every HPS depth.

The deep HPS nets train into ill-conditioned BatchNorms (scales spread over orders of magnitude, channels
with ~0 running variance). The batchnorm pass moves each BN's |scale| into the conv before its ReLU;
a BN whose shift cannot move on stays as ``sign * x + shift``. Checked here on ONNX Runtime, against
the graph before the rewrite, on random nets of every HPS depth made ill-conditioned on purpose, on the
suite's trained nets, and on a small graph for each case the fold alone leaves untouched.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from tests.test_batchnorm_fold import _conv, _model, _run, _unit
from toolchain.data import load_dataset
from toolchain.evaluators.accuracy import onnx_logits
from toolchain.graph.batchnorm import DEAD_VARIANCE, rewrite_batchnorm_after_relu
from toolchain.graph.from_torch import export_onnx
from toolchain.graph.simplify import onnxsim_model
from toolchain.models import create_model, list_models
from toolchain.training.checkpoints import load_checkpoint

# every HPS depth configuration, at half width (the rewrite does not depend on the width)
HPS_DEPTHS = sorted({spec.name.replace("-1x", "-0.5x") for spec in list_models("hps-*") if spec.width == 1.0})
# "exact up to float rounding": against a float64 run of the same network, the rewritten float32 graph errs
# at most this many times as much as the original float32 graph does (plus a floor for exact agreement)
ROUNDING_FACTOR, FLOOR = 2.0, 1e-6


def _per_sample_relative(reference: np.ndarray, candidate: np.ndarray) -> float:
    scale = np.maximum(np.abs(reference).max(axis=1), 1e-6)
    return float((np.abs(reference - candidate).max(axis=1) / scale).max())


def ill_conditioned(model: nn.Module, images: torch.Tensor, seed: int = 0) -> nn.Module:
    """Real statistics from ``images``, then each conv -> ReLU -> BN unit's channels scaled 1e-2..1e4 in the conv
    and undone by its BN (the float function unchanged), and the least active channel of the first BN made
    "dead" (running variance 1e-20, as a channel that never fired in training, amplified ~gamma/sqrt(eps)
    when it does): the deep HPS nets' conditions, with logits that stay finite."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the passes below
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), 32):
            model(images[start:start + 32])
    model.eval()
    with torch.no_grad():
        for unit in [m for m in model.modules() if hasattr(m, "act") and hasattr(m, "bn") and hasattr(m, "conv")]:
            if not isinstance(unit.act, nn.ReLU) or list(unit._modules) != ["conv", "act", "bn"]:
                continue
            channels = unit.bn.num_features
            factors = torch.logspace(-2.0, 4.0, channels)[torch.randperm(channels, generator=generator)]
            unit.conv.weight *= factors.reshape(-1, 1, 1, 1)
            unit.conv.bias *= factors
            unit.bn.running_mean *= factors
            unit.bn.running_var *= factors ** 2
        first = model.stages[0][0].body.squeeze1.bn
        first.running_var[int(first.running_mean.argmin())] = 1e-20
    return model


def _float64_logits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return copy.deepcopy(model).double()(torch.from_numpy(images).double()).numpy()


def assert_exact_up_to_rounding(model: nn.Module, images: np.ndarray, before: np.ndarray, after: np.ndarray) -> None:
    exact = _float64_logits(model, images)
    error_before, error_after = _per_sample_relative(exact, before), _per_sample_relative(exact, after)
    assert error_after <= ROUNDING_FACTOR * error_before + FLOOR, (error_before, error_after)


def _exported(model: nn.Module, images: np.ndarray, path) -> onnx.ModelProto:
    export_onnx(model, torch.from_numpy(images[:1]), path, opset=17)
    return onnxsim_model(onnx.load(str(path)), path.name)


def _rewritten(model: onnx.ModelProto, tmp_path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, onnx.ModelProto]:
    before_path, after_path = tmp_path / "before.onnx", tmp_path / "after.onnx"
    onnx.save(model, str(before_path))
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    rewrite = rewrite_batchnorm_after_relu(rewritten)
    onnx.checker.check_model(rewritten)
    onnx.save(rewritten, str(after_path))
    assert rewrite.folded + rewrite.rescaled == _batchnorms_after_relu(model)
    return onnx_logits(before_path, images), onnx_logits(after_path, images), rewritten


def _batchnorms_after_relu(model: onnx.ModelProto) -> int:
    producers = {name: node for node in model.graph.node for name in node.output}
    return sum(1 for node in model.graph.node if node.op_type == "BatchNormalization"
               and producers.get(node.input[0]) is not None and producers[node.input[0]].op_type == "Relu")


def _batchnorms_with_dead_channels(model: onnx.ModelProto) -> list[str]:
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    return [node.name for node in model.graph.node if node.op_type == "BatchNormalization"
            and (constants[node.input[4]] < DEAD_VARIANCE).any()]


def _unnormalised_batchnorms(model: onnx.ModelProto) -> list[str]:
    """BNs after a ReLU that still carry a scale other than +-1 (the rewrite leaves only those with dead channels)."""
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    producers = {name: node for node in model.graph.node for name in node.output}
    return [node.name for node in model.graph.node if node.op_type == "BatchNormalization"
            and producers.get(node.input[0]) is not None and producers[node.input[0]].op_type == "Relu"
            and not np.allclose(np.abs(constants[node.input[1]]), 1.0)]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_dataset("fashion-mnist", "test", limit=96).normalized_arrays()[0]


@pytest.mark.parametrize("depth", HPS_DEPTHS)
def test_rescale_is_exact_on_an_ill_conditioned_hps_net_of_every_depth(depth, images, tmp_path):
    torch.manual_seed(0)
    model = ill_conditioned(create_model(depth, num_classes=10, in_channels=1), torch.from_numpy(images))
    exported = _exported(model, images, tmp_path / "model.onnx")
    before, after, rewritten = _rewritten(exported, tmp_path, images)
    assert np.isfinite(before).all()
    assert_exact_up_to_rounding(model, images, before, after)
    with_dead = _batchnorms_with_dead_channels(exported)
    assert "/stages/stages.0/stages.0.0/body/squeeze1/bn/BatchNormalization" in with_dead
    assert _unnormalised_batchnorms(rewritten) == with_dead


def test_rescale_is_exact_on_the_trained_nets(trained_hps, tiny_hps, images, tmp_path):
    for trained in (trained_hps, tiny_hps):
        model = load_checkpoint(trained.checkpoint).model
        before, after, rewritten = _rewritten(_exported(model, images, tmp_path / "model.onnx"), tmp_path, images)
        assert_exact_up_to_rounding(model, images, before, after)
        assert _unnormalised_batchnorms(rewritten) == []


def test_a_batchnorm_before_a_padded_conv_keeps_only_its_sign_mean_and_shift(tmp_path):
    nodes, init = _unit(gamma_low=-1.0)
    head, head_init = _conv("head", "bn", kernel=3, pads=1)
    model = _model(nodes + [head], init + head_init, ["head"])
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    rewrite = rewrite_batchnorm_after_relu(rewritten)
    assert (rewrite.folded, rewrite.rescaled) == (0, 1)
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in rewritten.graph.initializer}
    bn = next(node for node in rewritten.graph.node if node.op_type == "BatchNormalization")
    assert set(np.abs(constants[bn.input[1]]).tolist()) == {1.0}  # its scale is in the conv now
    np.testing.assert_allclose(constants[bn.input[4]] + 1e-3, 1.0, rtol=1e-7)  # variance + epsilon = 1
    assert (constants[bn.input[1]] < 0).any()  # the negative scales kept their sign
    for expected, actual in zip(_run(model), _run(rewritten), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_dead_channels_are_counted(tmp_path):
    nodes, init = _unit()
    variance = next(tensor for tensor in init if tensor.name == "bn.var")
    values = numpy_helper.to_array(variance).copy()
    values[:2] = 1e-20
    init = [numpy_helper.from_array(values, "bn.var") if tensor.name == "bn.var" else tensor for tensor in init]
    head, head_init = _conv("head", "bn", kernel=3, pads=1)
    model = _model(nodes + [head], init + head_init, ["head"])
    assert rewrite_batchnorm_after_relu(model).dead_channels == 2


def drifted_checkpoint(source, destination, orders: float = 7.0):
    """A trained checkpoint whose conv outputs drifted as a deep HPS net's do in training: each conv -> ReLU -> BN
    unit's channels 1 to 10**orders times larger in the conv, the BN's statistics with them (running variances
    spread over 14 orders of magnitude). The float function is the same; per-tensor INT8 ranges are not."""
    from toolchain.training.checkpoints import read_info, save_checkpoint

    model = load_checkpoint(source).model
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for unit in [m for m in model.modules() if list(getattr(m, "_modules", {})) == ["conv", "act", "bn"]]:
            channels = unit.bn.num_features
            factors = torch.logspace(0.0, orders, channels)[torch.randperm(channels, generator=generator)]
            unit.conv.weight *= factors.reshape(-1, 1, 1, 1)
            unit.conv.bias *= factors
            unit.bn.running_mean *= factors
            unit.bn.running_var *= factors ** 2
    info = read_info(source)
    info.sha256, info.created = "", ""
    save_checkpoint(model, info, destination)
    return destination


def test_a_drifted_checkpoint_exports_within_the_gate_with_default_options(tiny_hps, tmp_path):
    from toolchain.errors import AccuracyGateError
    from toolchain.pipeline import EXPORT_PASSES, ExportRequest, run_export
    from toolchain.pipeline.config import QuantSettings

    checkpoint = drifted_checkpoint(tiny_hps.checkpoint, tmp_path / "drifted.pt")
    result = run_export(ExportRequest(model="hps-06-0.25x", checkpoint=checkpoint, artifacts=tmp_path / "store",
                                      eval_count=300))
    document = result.manifest.to_json()
    assert document["accuracy"]["drop_pp"] <= 1.0 and document["kept_float"] == []
    assert document["nodes"]["batchnorm_rescaled"] > 0 and "qat" not in document["inputs"]["checkpoint"]
    # the control: without the batchnorm pass the same checkpoint cannot ship all-INT8
    without = tuple(name for name in EXPORT_PASSES if name != "batchnorm")
    with pytest.raises(AccuracyGateError):
        run_export(ExportRequest(model="hps-06-0.25x", checkpoint=checkpoint, artifacts=tmp_path / "control",
                                 eval_count=300, passes=without, quant=QuantSettings(max_kept_float=0), qat="off"))
