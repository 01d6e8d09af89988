"""torch -> ONNX, checked by onnx.checker (parity with torch on real images is the runner's check).

Two exporters: the TorchScript one (``dynamo=False``, the default: ~0.15 s, exact at opsets 7-18, but
deprecated by PyTorch and warning about it) and the dynamo one (~3-5 s, needs onnxscript, may write
another opset than asked when its down-conversion fails). Either way the opset *written* is checked,
weights are embedded (no external .data file) and the batch axis is dynamic.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import onnx
import torch
from torch import nn

from toolchain import interrupts
from toolchain.errors import ExportError
from toolchain.fsutil import disk_error
from toolchain.pipeline.config import DEFAULT_OPSET, ExportSettings

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExportResult:
    """What the export wrote."""

    path: Path
    opset: int
    exporter: str
    nodes: int
    seconds: float


def _run_exporter(model: nn.Module, sample: torch.Tensor, path: Path, opset: int, exporter: str) -> None:
    kwargs = dict(opset_version=opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    # Both exporters talk a lot (deprecation notes, dynamo's conversion report); the result is checked below.
    # Ctrl-C waits for the end of the export (seconds): a KeyboardInterrupt raised inside the tracer's callbacks
    # unwinds through torch's C++ tracing state, and the process died of SIGSEGV before it could say it was
    # interrupted (once in CI, test_interrupts.py).
    with interrupts.deferred(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            from torch.export import Dim

            torch.onnx.export(model, (sample,), str(path), dynamo=True, external_data=False,
                              dynamic_shapes=({0: Dim("batch")},), **kwargs)
        else:
            torch.onnx.export(model, (sample,), str(path), dynamo=False,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **kwargs)


def written_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset a model imports."""
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)


def export_onnx(model: nn.Module, sample: torch.Tensor, path: Path, opset: int = DEFAULT_OPSET,
                metadata: Mapping[str, str] | None = None, exporter: str = "torchscript") -> ExportResult:
    """Export an eval-mode model to ``path`` with named input/output, dynamic batch and metadata_props."""
    ExportSettings(opset=opset, exporter=exporter).validate()
    started = time.perf_counter()
    model.eval()
    try:
        _run_exporter(model, sample, path, opset, exporter)
    except Exception as exc:  # the exporters raise many types; all mean the same to the user
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise disk_error(exc, path=path) or ExportError(
            f"torch.onnx.export ({exporter}) failed at opset {opset}: {detail[:200]}",
            "try another --opset, or --exporter " + ("torchscript" if exporter == "dynamo" else "dynamo")) from None
    exported = onnx.load(str(path))
    found = written_opset(exported)
    if found != opset:
        raise ExportError(f"the {exporter} exporter wrote opset {found}, not the {opset} asked for",
                          "use --exporter torchscript, which writes the opset it is given")
    for key, value in (metadata or {}).items():
        entry = exported.metadata_props.add()
        entry.key, entry.value = key, value
    exported.doc_string = "exported by toolchain"
    try:
        onnx.checker.check_model(exported, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported model fails onnx.checker: {str(exc).splitlines()[0][:200]}",
                          "try another --opset or --exporter") from None
    onnx.save(exported, str(path))
    return ExportResult(path=path, opset=found, exporter=exporter, nodes=len(exported.graph.node),
                        seconds=time.perf_counter() - started)
