"""`toolchain quantize --onnx`: any NCHW ONNX image classifier, with calibration and eval sets defined
under calibration/ or given as arrays; files that are not such classifiers are refused clearly."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tests.fixtures.data import assert_clear_error
from tests.fixtures.pipeline import tree
from tests.test_cli_train import assert_one_line_error, toolchain  # noqa: F401  (fixture)
from toolchain.data.imagesets import (ImageSet, available_definitions, check_disjoint, load_definition,
                                   parse_definition)
from toolchain.data import load_dataset
from toolchain.errors import CalibrationError, OnnxModelError, UsageError
from toolchain.pipeline import QuantizeRequest, run_quantize
from toolchain.pipeline.config import QuantSettings


class ChannelsLast(nn.Module):
    """A classifier that takes N x H x W x C images (TensorFlow's layout)."""

    def __init__(self, layers: nn.Module) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.permute(0, 3, 1, 2))


def export_foreign(path: Path, channels_last: bool = False) -> Path:
    """A classifier that is not from the zoo: its own layers, input 'pixels', output 'scores'."""
    torch.manual_seed(1)
    model: nn.Module = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                                     nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    sample = torch.zeros(1, 1, 32, 32)
    if channels_last:
        model, sample = ChannelsLast(model), torch.zeros(1, 32, 32, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model.eval(), (sample,), str(path), dynamo=False, opset_version=17, input_names=["pixels"],
                          output_names=["scores"], dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}})
    return path


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    return export_foreign(tmp_path / "classifier.onnx")


def test_quantize_cli_stores_a_foreign_classifier(toolchain, foreign, tmp_path):  # noqa: F811
    store = tmp_path / "store"
    made = toolchain("quantize", "--onnx", foreign, "--calibration", "fashion-mnist", "--eval-count", "200",
                     "--max-drop", "100", "--artifacts", store, "--json")
    assert made.code == 0, made.stderr
    manifest = json.loads(made.stdout)
    folder = Path(manifest["folder"])
    assert folder.parent == store / "classifier" and not manifest["cached"]
    assert manifest["input"] == {"name": "pixels", "shape": [None, 1, 32, 32]}
    assert manifest["output"] == {"name": "scores"}
    assert manifest["inputs"]["source_onnx"]["file"] == str(foreign)
    assert manifest["inputs"]["calibration"]["name"] == "fashion-mnist"
    assert manifest["inputs"]["evalset"]["split"] == "test" and manifest["accuracy"]["fp32"]["count"] == 200
    assert manifest["parity"]["simplify_max_abs"] <= 1e-4
    assert sorted(path.name for path in folder.iterdir()) == [
        "evalset.npz", "manifest.json", "model.fp32.onnx", "model.int8.onnx"]
    again = toolchain("quantize", "--onnx", foreign, "--calibration", "fashion-mnist", "--eval-count", "200",
                      "--max-drop", "100", "--artifacts", store, "--json")
    assert json.loads(again.stdout)["cached"]


def test_array_calibration_and_eval_sets_are_accepted(foreign, tmp_path):
    test_images, test_labels = load_dataset("fashion-mnist", "test", limit=120).normalized_arrays()
    train_images = load_dataset("fashion-mnist", "train", limit=64).normalized_arrays()[0]
    np.save(tmp_path / "calibration.npy", train_images)
    np.savez(tmp_path / "eval.npz", images=test_images, labels=test_labels)
    result = run_quantize(QuantizeRequest(onnx=foreign, calibration=str(tmp_path / "calibration.npy"),
                                          eval_set=str(tmp_path / "eval.npz"), artifacts=tmp_path / "store",
                                          quant=QuantSettings(max_drop=100.0)))
    assert result.manifest.to_json()["inputs"]["calibration"]["kind"] == "arrays"
    assert result.manifest.to_json()["accuracy"]["int8"]["count"] == 120


def _truncated(path: Path) -> Path:
    target = path.with_name("truncated.onnx")
    target.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return target


def _text(path: Path) -> Path:
    target = path.with_name("notes.onnx")
    target.write_text("this is not a model\n")
    return target


BAD_FILES = {
    "text file": (_text, "is not an ONNX model"),
    "truncated ONNX": (_truncated, "is not an ONNX model"),
    "channels-last input": (lambda path: export_foreign(path.with_name("nhwc.onnx"), channels_last=True),
                            "not N x C x H x W"),
    "missing file": (lambda path: path.with_name("absent.onnx"), "not found"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_files_that_are_not_nchw_classifiers_are_refused(case, foreign, tmp_path):
    make, fragment = BAD_FILES[case]
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(OnnxModelError) as raised:
        run_quantize(QuantizeRequest(onnx=make(foreign), calibration="fashion-mnist", artifacts=store))
    assert_clear_error(raised.value, fragment)
    assert tree(store) == []


def test_cli_refuses_a_corrupt_file_in_one_line(toolchain, foreign, tmp_path):  # noqa: F811
    outcome = toolchain("quantize", "--onnx", _truncated(foreign), "--artifacts", tmp_path / "store")
    assert_one_line_error(outcome, 1, "truncated.onnx is not an ONNX model")
    assert not (tmp_path / "store").exists()


def test_array_calibration_needs_an_eval_set(foreign, tmp_path):
    np.save(tmp_path / "calibration.npy", np.zeros((4, 1, 32, 32), np.float32))
    with pytest.raises(UsageError) as raised:
        run_quantize(QuantizeRequest(onnx=foreign, calibration=str(tmp_path / "calibration.npy"),
                                     artifacts=tmp_path / "store"))
    assert_clear_error(raised.value, "--eval-set")


def test_foreign_model_without_metadata_needs_a_calibration_set(foreign, tmp_path):
    with pytest.raises(UsageError) as raised:
        run_quantize(QuantizeRequest(onnx=foreign, artifacts=tmp_path / "store"))
    assert_clear_error(raised.value, "no calibration set")


def test_eval_images_that_were_calibrated_on_are_refused():
    images = np.random.default_rng(0).normal(size=(10, 1, 4, 4)).astype(np.float32)
    calibration = ImageSet(images[:6], None, {})
    evaluation = ImageSet(images[4:], np.zeros(6, np.int64), {})
    with pytest.raises(CalibrationError) as raised:
        check_disjoint(calibration, evaluation)
    assert_clear_error(raised.value, "shares 2 image(s)")


def test_shipped_calibration_definitions_are_valid_and_draw_from_train():
    names = available_definitions()
    assert {"fashion-mnist", "cifar10", "cifar100"} <= set(names)
    for name in names:
        definition = load_definition(name)
        assert definition.split == "train" and definition.count > 0 and definition.preprocessing == "normalize"
        assert definition.eval_counterpart().split == "test"


@pytest.mark.parametrize("text, fragment", [
    ('dataset = "fashion-mnist"\nsplit = "train"\n', "missing count"),
    ('dataset = "fashion-mnist"\nsplit = "train"\ncount = 8\ncolour = "red"\n', "unknown key(s) colour"),
    ('dataset = "fashion-mnist"\nsplit = "train"\ncount = "many"\n', "count must be an integer"),
    ('dataset = "fashion-mnist"\nsplit = "train"\ncount = 8\npreprocessing = "whiten"\n', "unknown preprocessing"),
    ('dataset = "fashion-mnist"\nsplit = "train"\ncount = -1\n', "is empty"),
    ("dataset = \n", "not valid TOML"),
])
def test_bad_calibration_definitions_are_refused(text, fragment):
    with pytest.raises(CalibrationError) as raised:
        parse_definition(text, "bad", "bad.toml")
    assert_clear_error(raised.value, fragment)


def test_calibrating_on_the_test_split_is_refused():
    definition = parse_definition('dataset = "fashion-mnist"\nsplit = "test"\ncount = 8\n', "test-split")
    with pytest.raises(CalibrationError) as raised:
        definition.eval_counterpart()
    assert_clear_error(raised.value, "test split")


def test_quantized_model_keeps_weights_inside_one_file(foreign, tmp_path):
    result = run_quantize(QuantizeRequest(onnx=foreign, calibration="fashion-mnist", eval_count=100,
                                          artifacts=tmp_path / "store", quant=QuantSettings(max_drop=100.0)))
    model = onnx.load(str(result.folder / "model.int8.onnx"), load_external_data=False)
    assert not any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in model.graph.initializer)
    assert not list(result.folder.glob("*.data"))
