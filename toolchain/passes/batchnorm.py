"""The batchnorm pass: fold the BatchNorms HPS puts after its ReLUs, where that is exact (`toolchain.graph.batchnorm`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from toolchain.pipeline.passes import ModelRecord, Pass, register_pass

if TYPE_CHECKING:
    from toolchain.pipeline.context import PassContext


@register_pass
class BatchNormPass(Pass):
    name = "batchnorm"
    checks_parity = True

    def run(self, record: ModelRecord, context: "PassContext", folder: Path) -> ModelRecord:
        import onnx

        from toolchain.graph.batchnorm import fold_batchnorm_after_relu

        model = onnx.load(str(record.fp32))
        folded = fold_batchnorm_after_relu(model)
        path = folder / "model.onnx"
        onnx.save(model, str(path))
        if folded:
            context.on_message(f"{folded} BatchNorm after ReLU folded away: {len(model.graph.node)} nodes")
        return replace(record, fp32=path).with_notes(nodes={"simplified": len(model.graph.node),
                                                            "batchnorm_folded": folded})
