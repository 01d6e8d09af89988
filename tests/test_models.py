"""The model zoo: every registered network builds, runs, round-trips its name and keeps its size."""

from __future__ import annotations

import csv
from importlib import resources

import pytest
import torch
from torch import nn

from toolchain.errors import UnknownModelError
from toolchain.models import (
    count_macs,
    count_parameters,
    create_model,
    list_models,
    resolve,
    state_dict_bytes,
)
from toolchain.models.squeezenext import SQUEEZENEXT, SqueezeNextBlock

ALL = list_models()

# Parameters of every listed variant at 10 classes, 3 input channels. A change here changes what
# users deploy: update deliberately, never to make a failing test pass.
EXPECTED_PARAMETERS = {
    "hps-06-0.4x": 43_073, "hps-06-0.5x": 67_670, "hps-06-0.575x": 86_922, "hps-06-0.75x": 148_876,
    "hps-06-1x": 261_666, "hps-08-0.5x": 79_982, "hps-08-1x": 309_330, "hps-09-0.5x": 96_902,
    "hps-09-1x": 375_426, "hps-14-1x": 536_850, "hps-14-1.5x": 1_195_222, "hps-21-1x-v2": 766_938,
    "hps-21-1x-v3": 710_586, "hps-23-1x": 842_778, "hps-25-1x": 862_266,
    "modified-sqnxt-23-1x": 588_666,
    "shallow-06-0.4x": 43_073, "shallow-06-0.575x": 86_922, "shallow-06-1x": 261_666,
    "shallow-08-1x": 309_330, "shallow-09-0.5x": 96_902, "shallow-09-1x": 375_426,
    "shallow-10-1x": 356_994, "shallow-12-1x": 404_658, "shallow-14-1x": 536_850,
    "shallow-14-1.5x": 1_195_222, "shallow-16-1x": 499_986, "shallow-21-0.2x": 31_572,
    "shallow-21-1x": 766_938,
    "sqnxt-23-1x-v1": 588_666, "sqnxt-23-1x-v2": 588_666, "sqnxt-23-1x-v3": 603_018,
    "sqnxt-23-1x-v4": 617_370, "sqnxt-23-1x-v5": 786_426, "sqnxt-23-2x-v1": 2_313_962,
    "squeezed-cnn": 733_514, "squeezenet-v1.0": 740_554, "squeezenet-v1.1": 727_626,
}


def test_registry_lists_exactly_the_pinned_variants() -> None:
    assert sorted(s.name for s in ALL) == sorted(EXPECTED_PARAMETERS)


@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.name)
def test_every_model_builds_and_classifies_at_its_input_size(spec) -> None:
    model = spec.build(num_classes=10, in_channels=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, spec.input_size, spec.input_size))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.name)
def test_every_model_name_round_trips(spec) -> None:
    assert resolve(spec.name).name == spec.name
    assert resolve(spec.name.upper()).name == spec.name


@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.name)
def test_every_model_keeps_its_parameter_count(spec) -> None:
    assert count_parameters(spec.build(num_classes=10, in_channels=3)) == EXPECTED_PARAMETERS[spec.name]


def test_squeezenext_matches_the_common_public_implementation() -> None:
    assert count_parameters(create_model("sqnxt-23-1x-v1", num_classes=10)) == 588_666
    assert count_parameters(create_model("sqnxt-23-2x-v1", num_classes=10)) == 2_313_962


def test_imagenet_configuration_has_the_papers_stem_and_size() -> None:
    v1 = create_model("sqnxt-23-1x-v1", num_classes=1000, configuration="imagenet")
    v2 = create_model("sqnxt-23-1x-v2", num_classes=1000, configuration="imagenet")
    assert v1.stem.unit.conv.kernel_size == (7, 7) and v1.stem.unit.conv.stride == (2, 2)
    assert v2.stem.unit.conv.kernel_size == (5, 5)
    assert isinstance(v1.stem.pool, nn.MaxPool2d)
    # SqueezeNext paper, Table 3: 1.0-SqNxt-23 has 0.72M parameters.
    assert round(count_parameters(v1) / 1e6, 2) == 0.72
    with torch.no_grad():
        assert v1.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    assert resolve("sqnxt-23-1x-v1", configuration="imagenet").input_size == 224


def test_cifar_configuration_has_a_3x3_stride_1_stem_and_no_max_pool() -> None:
    model = create_model("sqnxt-23-1x-v1")
    assert model.stem.conv.kernel_size == (3, 3) and model.stem.conv.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_only_squeezenext_offers_the_imagenet_configuration() -> None:
    with pytest.raises(UnknownModelError, match="no 'imagenet' configuration"):
        resolve("hps-06-1x", configuration="imagenet")


def test_squeezenext_depth_variants_are_the_papers() -> None:
    depths = {v: resolve(f"sqnxt-23-1x-v{v}").depth for v in range(1, 6)}
    assert depths == {1: (6, 6, 8, 1), 2: (6, 6, 8, 1), 3: (4, 8, 8, 1), 4: (2, 10, 8, 1),
                      5: (2, 4, 14, 1)}


def test_squeezenext_block_structure() -> None:
    block = SqueezeNextBlock(64, 32, 1, SQUEEZENEXT)
    convs = [m for m in block.body.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1), (1, 1), (1, 3), (3, 1), (1, 1)]
    # narrowing block: C/4 then C/8 as in the public implementation
    assert [c.out_channels for c in convs] == [16, 8, 16, 16, 32]
    assert isinstance(block.shortcut, nn.Sequential)  # channel change -> projection


def _units(model: nn.Module) -> list[list[str]]:
    return [[type(m).__name__ for m in unit.children()] for unit in model.modules()
            if type(unit).__name__ == "ConvUnit"]


def test_hps_sandwiches_relu_between_conv_and_batch_norm() -> None:
    model = create_model("hps-06-1x")
    assert set(map(tuple, _units(model))) == {("Conv2d", "ReLU", "BatchNorm2d")}
    assert model.dropout.p == pytest.approx(0.3)
    kernels = [m.kernel_size for m in model.stages[0][0].body.modules() if isinstance(m, nn.Conv2d)]
    assert kernels[2:4] == [(3, 1), (1, 3)]


def test_shallow_squeezenext_uses_elu_and_dropout_before_the_classifier() -> None:
    model = create_model("shallow-09-0.5x")
    assert set(map(tuple, _units(model))) == {("Conv2d", "ELU", "BatchNorm2d")}
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == pytest.approx(0.3)


def test_squeezenext_units_are_conv_batch_norm_relu() -> None:
    assert set(map(tuple, _units(create_model("sqnxt-23-1x-v5")))) == {("Conv2d", "BatchNorm2d", "ReLU")}
    assert set(map(tuple, _units(create_model("modified-sqnxt-23-1x")))) == {("Conv2d", "BatchNorm2d", "ReLU")}


def test_modified_squeezenext_sums_the_shortcut_without_its_own_activation() -> None:
    baseline = create_model("sqnxt-23-1x-v1").stages[0][0]
    modified = create_model("modified-sqnxt-23-1x").stages[0][0]
    assert isinstance(baseline.shortcut_act, nn.ReLU)
    assert isinstance(modified.shortcut_act, nn.Identity)


def test_any_width_builds_by_name() -> None:
    spec = resolve("hps-14-1.3x")
    assert (spec.depth, spec.width) == ((1, 2, 8, 1), 1.3)
    assert count_parameters(spec.build()) > count_parameters(create_model("hps-14-1x"))
    assert resolve("hps-06-0.125x").build()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_classes_and_input_channels_are_configurable() -> None:
    for spec in (resolve("hps-06-0.5x"), resolve("squeezenet-v1.1"), resolve("squeezed-cnn")):
        model = spec.build(num_classes=100, in_channels=1).eval()
        with torch.no_grad():
            assert model(torch.randn(3, 1, 32, 32)).shape == (3, 100)


@pytest.mark.parametrize("name, hint", [
    ("hsp-06-1x", "did you mean hps-06-1x"),
    ("hps-07-1x", "valid depths: hps-06, hps-08"),
    ("hps-21-1x", "hps-21-1x-v2, hps-21-1x-v3"),
    ("sqnxt-23-1x-v9", "sqnxt-23-1x-v1"),
    ("hps-06-0x", "width multiplier"),
    ("squeezenet-v1.2", "squeezenet-v1.1"),
])
def test_unknown_names_fail_with_the_closest_valid_names(name: str, hint: str) -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve(name)
    assert hint in f"{info.value.message} {info.value.hint}"
    assert info.value.exit_code == 2


def test_wildcard_listing() -> None:
    names = [s.name for s in list_models("hps-06-*")]
    assert names == ["hps-06-0.4x", "hps-06-0.5x", "hps-06-0.575x", "hps-06-0.75x", "hps-06-1x"]
    assert list_models("nothing-*") == []


def _csv_rows(name: str) -> list[dict[str, str]]:
    text = resources.files("toolchain.models").joinpath("data", name).read_text()
    return list(csv.DictReader(text.splitlines()))


@pytest.mark.parametrize("row", _csv_rows("reported-results.csv"), ids=lambda r: f"{r['name']}-{r['dataset']}")
def test_paper_rows_describe_the_registered_network(row: dict[str, str]) -> None:
    spec = resolve(row["name"])
    assert spec.name == row["name"]
    if row["depth"]:
        assert spec.depth == tuple(int(d) for d in row["depth"].split())
        assert spec.width == float(row["width"])
    assert any(r.dataset == row["dataset"] and r.size_mb == float(row["size_mb"])
               and r.accuracy_pct == float(row["accuracy_pct"]) for r in spec.paper_results)


@pytest.mark.parametrize("row", _csv_rows("bluebox2-deployment-results.csv"), ids=lambda r: r["name"])
def test_every_table_4_model_is_registered(row: dict[str, str]) -> None:
    spec = resolve(row["name"])
    assert any(r.table == row["table"] for r in spec.paper_results)


def test_paper_style_size_is_the_state_dict_file() -> None:
    model = create_model("hps-06-0.5x")
    size = state_dict_bytes(model)
    # float32 weights plus BatchNorm running statistics plus pickle framing
    assert 4 * count_parameters(model) < size < 4 * count_parameters(model) * 1.3


def test_macs_grow_with_width_and_input_size() -> None:
    small = count_macs(create_model("hps-06-0.5x"), (1, 3, 32, 32))
    wide = count_macs(create_model("hps-06-1x"), (1, 3, 32, 32))
    assert 0 < small < wide
    # SqueezeNext paper, Table 3: 1.0-SqNxt-23 costs 282 M MACs at 227x227; ours at 224x224 is close
    imagenet = count_macs(create_model("sqnxt-23-1x-v1", 1000, configuration="imagenet"), (1, 3, 224, 224))
    assert 240e6 < imagenet < 300e6
