"""Export and simplify: zoo models become ONNX that computes what torch computes, or a clear error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from tests.fixtures.data import assert_clear_error
from toolchain.data import load_dataset
from toolchain.errors import ExportError, ParityError, UsageError
from toolchain.evaluators.accuracy import onnx_logits
from toolchain.evaluators.parity import check_parity, max_abs_diff, top1_agreement
from toolchain.evaluators.reference import torch_array_logits
from toolchain.graph.from_torch import INPUT_NAME, OUTPUT_NAME, export_onnx
from toolchain.models import create_model
from toolchain.graph.simplify import simplify_onnx
from toolchain.pipeline.config import DEFAULT_RTOL

ZOO = ["hps-06-0.5x", "shallow-21-0.2x", "sqnxt-23-1x-v1", "modified-sqnxt-23-1x", "squeezenet-v1.1",
       "squeezed-cnn"]
# BatchNorms after a ReLU that the simplify stage folds away: of hps-06's 22, those feeding a 1x1 conv (stem,
# squeeze1, separable2 x 4), the pooled classifier (spatial) and a projection shortcut's Add (expand x 4);
# Shallow's ELU is not positively homogeneous; the others have their BN before the activation (onnxsim's job).
BATCHNORM_FOLDED = {"hps-06-0.5x": 14}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Real 3-channel 32x32 images (the synthetic set), as the CIFAR-shaped zoo models take them."""
    return load_dataset("synthetic", "test", limit=64).normalized_arrays()[0]


def with_batchnorm_statistics(model: torch.nn.Module, images: np.ndarray) -> torch.nn.Module:
    """Random weights, but BatchNorm statistics measured on real images (as training would leave them).

    Fresh BatchNorm layers (mean 0, variance 1) let deep random networks reach logits of ~1e3, where
    float32 rounding alone exceeds 1e-4; trained networks do not look like that.
    """
    for layer in model.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # a plain average over the batches below
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), 16):
            model(torch.from_numpy(images[start:start + 16]))
    return model.eval()


@pytest.mark.parametrize("name", ZOO)
def test_export_and_simplify_match_torch_within_float32_rounding(name, images, tmp_path):
    torch.manual_seed(0)
    model = with_batchnorm_statistics(create_model(name, num_classes=10, in_channels=3), images)
    exported = export_onnx(model, torch.from_numpy(images[:1]), tmp_path / "model.onnx", opset=18,
                           metadata={"toolchain.model": name})
    simplified = simplify_onnx(exported.path, tmp_path / "simplified.onnx")
    reference = torch_array_logits(model, images)
    exact = torch_array_logits(model.double(), images.astype(np.float64))
    # Deep random networks amplify rounding: torch's own float32 answer is then off by more than 1e-4.
    # ONNX Runtime must be as close to the exact answer as torch is (and within 1e-4 where torch is).
    allowed = max(1e-4, 2 * max_abs_diff(exact, reference))
    assert exported.opset == 18
    assert max_abs_diff(exact, onnx_logits(exported.path, images)) <= allowed
    assert max_abs_diff(exact, onnx_logits(simplified.path, images)) <= allowed
    assert simplified.nodes_after <= simplified.nodes_before
    assert simplified.batchnorm_folded == BATCHNORM_FOLDED.get(name, 0)


def test_exported_model_has_named_io_dynamic_batch_and_metadata(images, tmp_path):
    model = create_model("hps-06-0.25x", num_classes=10, in_channels=3).eval()
    path = tmp_path / "model.onnx"
    export_onnx(model, torch.from_numpy(images[:1]), path, opset=13, metadata={"toolchain.dataset": "synthetic"})
    simplify_onnx(path, path)
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    assert [value.name for value in loaded.graph.input] == [INPUT_NAME]
    assert [value.name for value in loaded.graph.output] == [OUTPUT_NAME]
    assert loaded.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [entry.version for entry in loaded.opset_import if entry.domain == ""] == [13]
    metadata = {entry.key: entry.value for entry in loaded.metadata_props}
    assert metadata == {"toolchain.dataset": "synthetic"}  # onnxsim's long report is not kept
    assert onnx_logits(path, images[:7]).shape == (7, 10)  # any batch size


def test_parity_error_shows_the_measured_difference():
    reference = np.zeros((4, 10), dtype=np.float32)
    candidate = reference.copy()
    candidate[2, 3] = 0.25
    with pytest.raises(ParityError) as raised:
        check_parity(reference, candidate, 1e-4, 1e-6, "ONNX export vs torch")
    assert_clear_error(raised.value, "max |d| = 0.25", "--atol 0.0001")


def test_parity_tolerance_grows_with_the_size_of_the_logits():
    # float32 keeps ~7 digits: logits of 1e8 (a net with near-dead BatchNorm channels) differ by ~1e2
    # after export for rounding alone; the same difference on logits of ~10 is a real defect.
    huge = np.full((2, 10), 4.4e8, dtype=np.float32)
    assert check_parity(huge, huge + 192, 1e-4, 1e-6, "export") == 192
    with pytest.raises(ParityError) as raised:
        check_parity(huge, huge + 192, 1e-4, 0.0, "export")
    assert_clear_error(raised.value, "max |d| = 192", "--rtol 0", "max |logit| 4.4e+08")
    assert "ill-conditioned" in raised.value.hint
    usual = np.full((2, 10), 10.0, dtype=np.float32)
    with pytest.raises(ParityError):
        check_parity(usual, usual + 1e-3, 1e-4, 1e-6, "export")


def test_export_refuses_an_opset_outside_what_it_can_write(images, tmp_path):
    model = create_model("hps-06-0.25x", num_classes=10, in_channels=3)
    with pytest.raises(UsageError) as raised:
        export_onnx(model, torch.from_numpy(images[:1]), tmp_path / "model.onnx", opset=21)
    assert_clear_error(raised.value, "--opset 21")
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.slow
def test_dynamo_exporter_is_held_to_the_opset_it_was_asked_for(images, tmp_path):
    model = create_model("hps-06-0.25x", num_classes=10, in_channels=3).eval()
    sample = torch.from_numpy(images[:1])
    exported = export_onnx(model, sample, tmp_path / "model.onnx", opset=18, exporter="dynamo")
    assert exported.opset == 18 and not list(tmp_path.glob("*.data"))  # weights embedded
    assert max_abs_diff(torch_array_logits(model, images), onnx_logits(exported.path, images)) <= 1e-4
    with pytest.raises(ExportError) as raised:  # its down-conversion to 17 fails and it writes 18
        export_onnx(model, sample, tmp_path / "model17.onnx", opset=17, exporter="dynamo")
    assert_clear_error(raised.value, "wrote opset 18, not the 17")


def test_parity_is_judged_per_image_so_one_huge_image_does_not_loosen_the_others():
    # image 0 reaches 1.3e7 (an ill-conditioned net on one input); image 1 has usual logits
    reference = np.array([np.linspace(-1.3e7, 1.3e7, 10), np.linspace(-10.0, 10.0, 10)], dtype=np.float32)
    rounding = reference.copy()
    rounding[0, 3] += 13.0  # float32 rounding at 1.3e7: within 1e-5 of that image's scale
    assert check_parity(reference, rounding, 1e-4, 1e-5, "export") == 13.0
    defect = rounding.copy()
    defect[1, 2] += 0.01  # on the usual image this is a real defect, whatever image 0 does
    with pytest.raises(ParityError) as raised:
        check_parity(reference, defect, 1e-4, 1e-5, "export")
    assert_clear_error(raised.value, "eval image 1 of 2", "max |d| = 0.01", "its max |logit| 10")


def test_the_manifest_records_the_parity_basis_and_top1_agreement(hps_artifact):
    parity = hps_artifact.manifest.to_json()["parity"]
    assert parity["basis"].startswith("per image") and parity["rtol"] == DEFAULT_RTOL
    assert parity["export_top1_agreement_pct"] == 100.0 and parity["simplify_top1_agreement_pct"] == 100.0


def test_top1_agreement_counts_changed_classes():
    reference = np.eye(4, dtype=np.float32)
    candidate = reference.copy()
    candidate[0] = [0, 2, 0, 0]
    assert top1_agreement(reference, candidate) == 75.0


def test_the_tolerance_grows_with_the_references_own_float32_rounding():
    # a deep ill-conditioned net: its float32 logits already err by ~2e4 against float64 at 4e8
    reference = np.array([np.linspace(-4.3e8, 4.3e8, 10), np.linspace(-10.0, 10.0, 10)], dtype=np.float32)
    exported = reference.copy()
    exported[0, 1] += 9.9e4  # 2.3e-4 of the logit scale: above rtol 1e-5 alone
    with pytest.raises(ParityError):
        check_parity(reference, exported, 1e-4, 1e-5, "export")
    rounding = np.array([3e4, 1e-6])
    assert check_parity(reference, exported, 1e-4, 1e-5, "export", rounding) == pytest.approx(9.9e4, rel=1e-3)
    defect = exported.copy()
    defect[1, 0] += 0.01  # the well-conditioned image keeps its tight tolerance
    with pytest.raises(ParityError) as raised:
        check_parity(reference, defect, 1e-4, 1e-5, "export", rounding)
    assert_clear_error(raised.value, "eval image 1 of 2", "float32 rounding")
