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
    model.eval()
    try:
        chunks = [model(images).numpy() for images, _ in iterate_batches(dataset, batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(chunks)


@torch.no_grad()
def torch_array_logits(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of a model (switched to eval mode) over float32 NCHW images normalised as ONNX is fed."""
    model.eval()
    return np.concatenate([model(torch.from_numpy(images[i:i + batch_size])).numpy()
                           for i in range(0, len(images), batch_size)])
