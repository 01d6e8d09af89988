"""The reference answers a torch model gives: eval-mode logits over a dataset or over preprocessed images."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from toolchain.data import ImageDataset, iterate_batches


@torch.no_grad()
def torch_logits(model: nn.Module, dataset: ImageDataset, batch_size: int = 256) -> np.ndarray:
    """Eval-mode logits of a torch model over a whole dataset, in dataset order."""
    was_training = model.training
    device = next(model.parameters()).device  # a model trained on a GPU is evaluated there
    model.eval()
    try:
        chunks = [model(images.to(device)).cpu().numpy() for images, _ in iterate_batches(dataset, batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(chunks)


@torch.no_grad()
def torch_array_logits(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of a model (switched to eval mode) over float32 NCHW images normalised as ONNX is fed."""
    model.eval()
    return np.concatenate([model(torch.from_numpy(images[i:i + batch_size])).numpy()
                           for i in range(0, len(images), batch_size)])


# Monte Carlo rounding: float64 runs whose every layer output is perturbed by one float32 rounding (relative
# +-2**-24, random per value), so the spread says how much float32 rounding inside the net moves its logits
ROUNDING_SAMPLES = 2
_FLOAT32_UNIT_ROUNDOFF = 2.0 ** -24


@torch.no_grad()
def float32_rounding(model: nn.Module, images: np.ndarray, single: np.ndarray | None = None, batch_size: int = 256,
                     seed: int = 0) -> np.ndarray:
    """Per image, how far float32 rounding alone can move the model's logits (max |d|, an estimate).

    The largest of: the model's float32 logits against its float64 logits, and ROUNDING_SAMPLES float64
    runs with every layer's output rounded at random by float32's unit roundoff (Monte Carlo arithmetic).
    The second matters where values cancel: a deep, ill-conditioned net (activations of 1e9 inside,
    logits of 1e8) moves by ~1e-4 of its logits under rounding that two float32 implementations (torch's,
    onnxruntime's) make in different places, while one float32 run can happen to sit close to float64.
    ``single``: the model's float32 logits on ``images`` when the caller has them (not computed again).
    """
    import copy

    exact = copy.deepcopy(model).eval().double()
    generator = torch.Generator().manual_seed(seed)
    noisy = {"on": False}

    def perturb(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not noisy["on"] or not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return None
        jitter = torch.rand(output.shape, generator=generator, dtype=output.dtype) * 2.0 - 1.0
        return output * (1.0 + _FLOAT32_UNIT_ROUNDOFF * jitter)

    handles = [module.register_forward_hook(perturb) for module in exact.modules() if not list(module.children())]
    try:
        single = (torch_array_logits(model, images, batch_size) if single is None else single).astype(np.float64)
        runs = []
        for noisy["on"] in [False] + [True] * ROUNDING_SAMPLES:
            runs.append(np.concatenate([exact(torch.from_numpy(images[i:i + batch_size]).double()).numpy()
                                        for i in range(0, len(images), batch_size)]))
    finally:
        for handle in handles:
            handle.remove()
    double = runs[0]
    spread = [np.abs(run - double).reshape(len(images), -1).max(axis=1) for run in [single, *runs[1:]]]
    return np.max(spread, axis=0)
