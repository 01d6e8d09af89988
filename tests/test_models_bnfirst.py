"""The -bnfirst variants of HPS and Shallow SqueezeNext: conv -> BN -> activation, same parameters (a departure)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.fixtures.data import assert_clear_error
from toolchain.errors import UnknownModelError
from toolchain.models import count_parameters, create_model, list_models, resolve
from toolchain.models.squeezenext import ConvUnit


@pytest.mark.parametrize("name", ["hps-21-1x-v3", "hps-06-0.5x", "shallow-14-1.5x", "shallow-06-0.575x"])
def test_the_bnfirst_variant_reorders_every_unit_and_keeps_the_parameter_count(name):
    paper, variant = create_model(name, 10, 1), create_model(f"{name}-bnfirst", 10, 1)
    assert count_parameters(paper) == count_parameters(variant)
    units = [module for module in variant.modules() if isinstance(module, ConvUnit)]
    assert units and all(list(unit._modules) == ["conv", "bn", "act"] for unit in units)
    assert all(list(unit._modules) == ["conv", "act", "bn"] for unit in paper.modules() if isinstance(unit, ConvUnit))
    assert variant.eval()(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    spec = resolve(f"{name}-bnfirst")
    assert spec.bn_first and spec.name == f"{resolve(name).name}-bnfirst" and "departure" in spec.description
    assert not resolve(name).bn_first and spec.paper_results == ()


def test_families_already_in_that_order_refuse_the_suffix():
    with pytest.raises(UnknownModelError) as raised:
        resolve("sqnxt-23-1x-v1-bnfirst")
    assert_clear_error(raised.value, "no -bnfirst variant")
    assert "sqnxt-23-1x-v1" in raised.value.hint


def test_the_variants_are_listed_when_asked_for():
    names = {spec.name for spec in list_models("hps-21-*-bnfirst")}
    assert names == {"hps-21-1x-v2-bnfirst", "hps-21-1x-v3-bnfirst"}
    assert not any(spec.bn_first for spec in list_models("hps-*"))
    assert isinstance(create_model("shallow-09-0.5x-bnfirst").stages[0][0].body.squeeze1.act, nn.ELU)
