"""The export pass: the checkpoint's torch model -> ONNX at the configured opset, with the run's metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from toolchain.pipeline.passes import ModelRecord, Pass, register_pass

if TYPE_CHECKING:
    from toolchain.pipeline.context import PassContext


@dataclass(frozen=True)
class ExportConfig:
    """What the export pass is asked for."""

    opset: int
    exporter: str


@register_pass
class ExportPass(Pass):
    """torch -> ONNX; ``context.source`` is the run's `CheckpointSource` (model, metadata)."""

    name = "export"
    checks_parity = True

    def run(self, record: ModelRecord | None, context: "PassContext", folder: Path) -> ModelRecord:
        import torch

        from toolchain.graph.from_torch import INPUT_NAME, OUTPUT_NAME, export_onnx

        source = context.source
        path = folder / "model.onnx"
        exported = export_onnx(source.network, torch.from_numpy(context.evaluation.images[:1]), path,
                               self.config.opset, source.metadata(context), self.config.exporter)
        context.on_message(f"exported ({exported.exporter}, opset {exported.opset}, {exported.nodes} nodes)")
        return ModelRecord(fp32=path, input_name=INPUT_NAME, output_name=OUTPUT_NAME, opset=exported.opset,
                           notes={"nodes": {"exported": exported.nodes}})
