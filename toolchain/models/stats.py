"""Size and cost of a network: parameters, MACs at its input size, paper-style size."""

from __future__ import annotations

import io

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in model.parameters())


def state_dict_bytes(model: nn.Module, legacy_format: bool = False) -> int:
    """Size of a `torch.save(model.state_dict())` file: how the papers measure "model size".

    ``legacy_format`` uses the pre-1.6 serialisation the papers' PyTorch 1.0/1.1 wrote (no zip
    container, no per-tensor alignment), which is a few percent smaller.
    """
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer, _use_new_zipfile_serialization=not legacy_format)
    return buffer.getbuffer().nbytes


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at `input_shape` (N=1), convs and linears only."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape[1:]) if len(input_shape) == 4 else torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total
