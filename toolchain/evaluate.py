"""How good a model is: top-1 (and top-5) accuracy of a torch model or an ONNX file on labeled data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolchain.data import ImageDataset, iterate_batches


@dataclass(frozen=True)
class Accuracy:
    """Top-k accuracy in percent over `count` labeled images."""

    top1: float
    count: int
    top5: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy_from_logits(logits: np.ndarray, labels: np.ndarray, top5: bool = False) -> Accuracy:
    """Top-1 (and top-5 when asked and there are more than 5 classes) of logits vs labels."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("no labeled images to evaluate")
    top1 = float((logits.argmax(axis=1) == labels).mean() * 100.0)
    top5_pct = None
    if top5 and logits.shape[1] > 5:
        best5 = np.argpartition(-logits, 5, axis=1)[:, :5]
        top5_pct = float((best5 == labels[:, None]).any(axis=1).mean() * 100.0)
    return Accuracy(top1=top1, count=int(len(labels)), top5=top5_pct)


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


def evaluate_torch(model: nn.Module, dataset: ImageDataset, batch_size: int = 256) -> Accuracy:
    """Top-1 (top-5 for more than 10 classes) of a torch model on a dataset."""
    logits = torch_logits(model, dataset, batch_size)
    return accuracy_from_logits(logits, dataset.labels.numpy(), top5=dataset.num_classes > 10)


def onnx_logits(model: str | Path | "object", images: np.ndarray, batch_size: int = 256,
                threads: int | None = None) -> np.ndarray:
    """Logits of an ONNX model (path or an onnxruntime.InferenceSession) over float32 NCHW images."""
    session = model if hasattr(model, "run") else open_session(model, threads)
    input_name = session.get_inputs()[0].name
    outputs = [session.run(None, {input_name: images[i:i + batch_size]})[0]
               for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs)


def open_session(path: str | Path, threads: int | None = None) -> "object":
    """An onnxruntime CPU session with a fixed intra-op thread count (None: ORT's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def evaluate_onnx(model: str | Path | "object", images: np.ndarray, labels: np.ndarray,
                  batch_size: int = 256, top5: bool = False) -> Accuracy:
    """Top-1 (and top-5) of an ONNX model on normalised float32 images."""
    return accuracy_from_logits(onnx_logits(model, images, batch_size), labels, top5=top5)
