"""The optimizer factory (the nine optimizers of the papers) and AdaBound."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from tests.fixtures.data import assert_clear_error
from toolchain.errors import UsageError
from toolchain.training.optim import OPTIMIZERS, AdaBound, build_optimizer, optimizer_arguments

NAMES = ["SGD", "Adam", "Adamax", "Adagrad", "Adadelta", "ASGD", "RMSprop", "Rprop", "AdaBound"]


def _problem(seed: int = 0) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """A small separable classification problem a linear model can learn."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(256, 8, generator=generator)
    labels = (inputs[:, :4].sum(1) > 0).long() + 2 * (inputs[:, 4:].sum(1) > 0).long()
    torch.manual_seed(seed)
    return torch.nn.Linear(8, 4), inputs, labels


def test_every_optimizer_of_the_papers_is_available():
    assert [spec.name for spec in OPTIMIZERS.values()] == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_optimizer_lowers_the_loss_with_its_default_lr(name):
    model, inputs, labels = _problem()
    optimizer = build_optimizer(name.upper(), model.parameters())
    # Rprop and full-batch steps go together; every optimizer gets the same full batch here.
    with torch.no_grad():
        before = F.cross_entropy(model(inputs), labels).item()
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    with torch.no_grad():
        after = F.cross_entropy(model(inputs), labels).item()
    assert after < before * 0.9, (before, after)


def test_default_learning_rates_follow_the_documented_table():
    expected = {"sgd": 0.1, "adam": 1e-3, "adamax": 2e-3, "adagrad": 1e-2, "adadelta": 1.0, "asgd": 1e-2,
                "rmsprop": 1e-3, "rprop": 1e-2, "adabound": 1e-3}
    assert {name: optimizer_arguments(name)["lr"] for name in expected} == expected
    assert optimizer_arguments("adam", lr=0.01)["lr"] == 0.01


def test_papers_recipe_is_nesterov_sgd_with_weight_decay():
    optimizer = build_optimizer("sgd", torch.nn.Linear(2, 2).parameters())
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD)
    settings = (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"])
    assert settings == (0.1, 0.9, True, 5e-4)


def test_arguments_are_what_the_optimizer_really_uses():
    assert optimizer_arguments("adam") == {"lr": 1e-3, "weight_decay": 5e-4}
    assert optimizer_arguments("rprop", weight_decay=0.1) == {"lr": 1e-2}  # Rprop has no weight decay
    assert optimizer_arguments("SGD", momentum=0.5, nesterov=False) == {
        "lr": 0.1, "momentum": 0.5, "nesterov": False, "weight_decay": 5e-4}


def test_unknown_optimizer_suggests_the_closest_names():
    with pytest.raises(UsageError) as caught:
        optimizer_arguments("adamw")
    assert_clear_error(caught.value, "unknown optimizer 'adamw'")
    assert "Adam" in caught.value.hint


@pytest.mark.parametrize("arguments, fragment", [
    (dict(lr=0.0), "learning rate must be a positive number"),
    (dict(lr=math.nan), "learning rate must be a positive number"),
    (dict(weight_decay=-1.0), "weight decay must be >= 0"),
    (dict(momentum=1.5), "momentum must be in [0, 1)"),
    (dict(momentum=0.0), "Nesterov momentum needs a momentum above 0"),
])
def test_impossible_settings_are_usage_errors(arguments, fragment):
    with pytest.raises(UsageError) as caught:
        optimizer_arguments("sgd", **arguments)
    assert_clear_error(caught.value, fragment)


def test_adabound_first_step_is_the_bounded_adam_step():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = AdaBound([param], lr=1e-3, final_lr=0.1, gamma=1e-3)
    param.grad = torch.tensor([0.5, -0.25])
    optimizer.step()
    # step 1: bias-corrected Adam step is lr * g / (|g| + eps) = 1e-3 * sign(g), inside
    # [0.1 * (1 - 1/(1e-3 + 1)), 0.1 * (1 + 1/1e-3)] = [~1e-4, ~100] per unit of m / sqrt(v)
    grad = torch.tensor([0.5, -0.25])
    exp_avg, denom = 0.1 * grad, (0.001 * grad * grad).sqrt() + 1e-8
    step_size = 1e-3 * math.sqrt(1 - 0.999) / (1 - 0.9) / denom
    step = torch.clamp(step_size, 0.1 * (1 - 1 / 1.001), 0.1 * 1001) * exp_avg
    assert torch.allclose(param.detach(), torch.tensor([1.0, -2.0]) - step)


def test_adabound_ends_in_sgd_bounds():
    param = torch.nn.Parameter(torch.tensor([0.0]))
    optimizer = AdaBound([param], lr=1e-3, final_lr=0.1, gamma=0.5)
    for _ in range(2000):
        # tiny gradients: Adam alone would step by ~lr per unit, the bounds force ~final_lr
        param.grad = torch.tensor([1e-6])
        optimizer.step()
    before = param.item()
    param.grad = torch.tensor([1e-6])
    optimizer.step()
    exp_avg = optimizer.state[param]["exp_avg"].item()
    assert before - param.item() == pytest.approx(0.1 * exp_avg, rel=0.01)


def test_adabound_bounds_follow_the_scheduler_across_a_state_dict_round_trip():
    model, inputs, labels = _problem()
    optimizer = AdaBound(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1], gamma=0.1)
    F.cross_entropy(model(inputs), labels).backward()
    optimizer.step()
    scheduler.step()

    restored = AdaBound(model.parameters(), lr=5.0)
    restored.load_state_dict(optimizer.state_dict())
    group = restored.param_groups[0]
    assert group["lr"] == pytest.approx(1e-4) and group["base_lr"] == 1e-3
