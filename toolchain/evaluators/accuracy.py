"""Top-1 (and top-5) accuracy of an ONNX model on labeled images, through onnxruntime."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import OnnxModelError


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


def open_session(path: str | Path, threads: int | None = None, optimize: bool = True) -> "object":
    """An onnxruntime CPU session with a fixed intra-op thread count (None: ORT's default).

    ``optimize`` False: no graph optimisation, every node runs as written (ORT otherwise fuses a
    DequantizeLinear -> Conv -> QuantizeLinear into an integer conv, quantizing a float weight per tensor).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented (and RuntimeError)
        raise OnnxModelError(f"onnxruntime {ort.__version__} cannot load {path}: {_first_line(exc)}",
                             "use ops of the default ONNX domain at an opset this onnxruntime supports "
                             "(custom or contrib ops are not run here)") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[-1] if text else type(exc).__name__)[:200]


def onnx_logits(model: str | Path | "object", images: np.ndarray, batch_size: int = 256,
                threads: int | None = None) -> np.ndarray:
    """Logits of an ONNX model (path or an onnxruntime.InferenceSession) over float32 NCHW images."""
    session = model if hasattr(model, "run") else open_session(model, threads)
    input_name = session.get_inputs()[0].name
    try:
        outputs = [session.run(None, {input_name: images[i:i + batch_size]})[0]
                   for i in range(0, len(images), batch_size)]
    except Exception as exc:  # shape/type mismatches and kernel failures surface as onnxruntime exceptions
        where = model if not hasattr(model, "run") else "the model"
        raise OnnxModelError(f"onnxruntime failed running {where} on {len(images)} images of shape "
                             f"{tuple(images.shape[1:])}: {_first_line(exc)}",
                             "the model must take float32 N x C x H x W images of the eval set's shape") from None
    return np.concatenate(outputs)

