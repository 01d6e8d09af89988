"""Optimizers by name: the nine the papers compare (torch's eight plus AdaBound) behind one factory.

Default learning rates when ``lr`` is not given (``--lr`` omitted):

=========  =======  =================================================================
SGD        0.1      the papers' recipe (momentum 0.9, Nesterov, weight decay 5e-4)
Adam       0.001    Kingma & Ba
Adamax     0.002    Kingma & Ba (the value the HPS paper quotes)
Adagrad    0.01     Duchi et al. / torch default
Adadelta   1.0      Zeiler (lr only scales the adaptive step)
ASGD       0.01     torch default
RMSprop    0.001    Hinton's lecture value (the HPS paper quotes it)
Rprop      0.01     torch default (initial step size)
AdaBound   0.001    Luo et al., with final_lr 0.1
=========  =======  =================================================================

``momentum`` and ``nesterov`` apply to SGD only; ``weight_decay`` applies to every optimizer that
has it (all but Rprop). `optimizer_arguments` returns exactly what is passed, so a run records
the settings it really used.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch.optim import Optimizer

from toolchain.errors import UsageError


class AdaBound(Optimizer):
    """AdaBound (Luo et al., ICLR 2019): Adam whose per-parameter step is clipped into bounds that
    converge to SGD's ``final_lr``, so training starts adaptive and ends like SGD.

    Follows the authors' reference implementation. A learning-rate scheduler scales ``final_lr``
    with ``lr``; the group's initial lr is kept in the group (``base_lr``) so that this scaling
    survives `state_dict` / `load_state_dict` (the reference keeps it on the object and loses it).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 final_lr: float = 0.1, gamma: float = 1e-3, eps: float = 1e-8, weight_decay: float = 0.0,
                 amsbound: bool = False) -> None:
        if not lr > 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"invalid betas: {betas}")
        if not final_lr > 0.0 or not 0.0 < gamma < 1.0:
            raise ValueError(f"invalid final_lr {final_lr} or gamma {gamma}")
        defaults = dict(lr=lr, betas=betas, final_lr=final_lr, gamma=gamma, eps=eps,
                        weight_decay=weight_decay, amsbound=amsbound)
        super().__init__(params, defaults)
        for group in self.param_groups:
            group.setdefault("base_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            # A scheduler lowers lr; the bounds follow it, as in the reference implementation.
            final_lr = group["final_lr"] * group["lr"] / group["base_lr"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["weight_decay"] != 0:
                    grad = grad.add(param, alpha=group["weight_decay"])
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                    if group["amsbound"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if group["amsbound"]:
                    torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                    denom = state["max_exp_avg_sq"].sqrt().add_(group["eps"])
                else:
                    denom = exp_avg_sq.sqrt().add_(group["eps"])
                step_size = group["lr"] * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
                lower = final_lr * (1 - 1 / (group["gamma"] * step + 1))
                upper = final_lr * (1 + 1 / (group["gamma"] * step))
                update = torch.full_like(denom, step_size).div_(denom).clamp_(lower, upper).mul_(exp_avg)
                param.sub_(update)
        return loss


@dataclass(frozen=True)
class OptimizerSpec:
    """How one optimizer is built from the training options."""

    name: str  # as torch (or the AdaBound paper) spells it
    cls: type[Optimizer]
    default_lr: float
    uses_momentum: bool = False  # momentum + nesterov
    uses_weight_decay: bool = True


OPTIMIZERS: dict[str, OptimizerSpec] = {spec.name.lower(): spec for spec in (
    OptimizerSpec("SGD", torch.optim.SGD, 0.1, uses_momentum=True),
    OptimizerSpec("Adam", torch.optim.Adam, 1e-3),
    OptimizerSpec("Adamax", torch.optim.Adamax, 2e-3),
    OptimizerSpec("Adagrad", torch.optim.Adagrad, 1e-2),
    OptimizerSpec("Adadelta", torch.optim.Adadelta, 1.0),
    OptimizerSpec("ASGD", torch.optim.ASGD, 1e-2),
    OptimizerSpec("RMSprop", torch.optim.RMSprop, 1e-3),
    OptimizerSpec("Rprop", torch.optim.Rprop, 1e-2, uses_weight_decay=False),
    OptimizerSpec("AdaBound", AdaBound, 1e-3),
)}


def optimizer_spec(name: str) -> OptimizerSpec:
    """The optimizer called ``name`` (any case), or a usage error naming the closest ones."""
    key = name.strip().lower()
    if key in OPTIMIZERS:
        return OPTIMIZERS[key]
    close = difflib.get_close_matches(key, OPTIMIZERS, n=2)
    names = ", ".join(spec.name for spec in OPTIMIZERS.values())
    suggestions = " or ".join(OPTIMIZERS[c].name for c in close)
    hint = f"did you mean {suggestions}?" if close else f"use one of: {names}"
    raise UsageError(f"unknown optimizer {name!r}", hint)


def optimizer_arguments(name: str, lr: float | None = None, momentum: float = 0.9, nesterov: bool = True,
                        weight_decay: float = 5e-4) -> dict[str, Any]:
    """The keyword arguments the optimizer is built with (the settings a run records)."""
    spec = optimizer_spec(name)
    lr = spec.default_lr if lr is None else lr
    if not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"learning rate must be a positive number, got {lr}", "pass e.g. --lr 0.1")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise UsageError(f"weight decay must be >= 0, got {weight_decay}", "pass e.g. --weight-decay 5e-4")
    arguments: dict[str, Any] = {"lr": lr}
    if spec.uses_momentum:
        if not 0 <= momentum < 1:
            raise UsageError(f"momentum must be in [0, 1), got {momentum}", "pass e.g. --momentum 0.9")
        if nesterov and momentum == 0:
            raise UsageError("Nesterov momentum needs a momentum above 0",
                             "pass --no-nesterov with --momentum 0")
        arguments.update(momentum=momentum, nesterov=nesterov)
    if spec.uses_weight_decay:
        arguments["weight_decay"] = weight_decay
    return arguments


def build_optimizer(name: str, parameters: Iterable[Any], lr: float | None = None, momentum: float = 0.9,
                    nesterov: bool = True, weight_decay: float = 5e-4) -> Optimizer:
    """An optimizer by name over ``parameters`` (lr None: the optimizer's default, see the table)."""
    arguments = optimizer_arguments(name, lr, momentum, nesterov, weight_decay)
    return optimizer_spec(name).cls(parameters, **arguments)
