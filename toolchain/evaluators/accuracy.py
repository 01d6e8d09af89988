"""Top-1 (and top-5) accuracy of an ONNX model on labeled images, through onnxruntime."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Accuracy:
    """Top-k accuracy in percent over `count` labeled images."""

    top1: float
    count: int
    top5: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Accuracy":
        return cls(top1=float(data["top1"]), count=int(data["count"]), top5=data.get("top5"))


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


def open_session(path: str | Path, threads: int | None = None) -> "object":
    """An onnxruntime CPU session with a fixed intra-op thread count (None: ORT's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_logits(model: str | Path | "object", images: np.ndarray, batch_size: int = 256,
                threads: int | None = None) -> np.ndarray:
    """Logits of an ONNX model (path or an onnxruntime.InferenceSession) over float32 NCHW images."""
    session = model if hasattr(model, "run") else open_session(model, threads)
    input_name = session.get_inputs()[0].name
    outputs = [session.run(None, {input_name: images[i:i + batch_size]})[0]
               for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs)

