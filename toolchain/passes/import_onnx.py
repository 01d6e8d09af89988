"""The import pass of `toolchain quantize`: a foreign ONNX classifier, copied in with our metadata."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from toolchain.pipeline.passes import ModelRecord, Pass, register_pass

if TYPE_CHECKING:
    from toolchain.pipeline.context import PassContext


@register_pass
class ImportOnnxPass(Pass):
    """``context.source`` is the run's `OnnxSource` (the checked file and its sha256)."""

    name = "import-onnx"

    def run(self, record: ModelRecord | None, context: "PassContext", folder: Path) -> ModelRecord:
        import shutil

        from toolchain.graph.model import add_metadata, count_nodes

        source = context.source
        path = folder / "model.onnx"
        shutil.copyfile(source.path, path)
        add_metadata(path, source.metadata())
        classifier = source.classifier
        return ModelRecord(fp32=path, input_name=classifier.input_name, output_name=classifier.output_name,
                           opset=classifier.opset, notes={"nodes": {"source": count_nodes(path)}})
