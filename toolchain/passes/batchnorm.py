"""The batchnorm pass: fold the BatchNorms HPS puts after its ReLUs where exact, rescale the rest (`toolchain.graph.batchnorm`)."""

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
    version = 2  # 2: BNs that cannot fold are rescaled
    checks_parity = True

    def run(self, record: ModelRecord, context: "PassContext", folder: Path) -> ModelRecord:
        import onnx

        from toolchain.graph.batchnorm import rewrite_batchnorm_after_relu

        model = onnx.load(str(record.fp32))
        rewrite = rewrite_batchnorm_after_relu(model)
        path = folder / "model.onnx"
        onnx.save(model, str(path))
        if rewrite.folded or rewrite.rescaled:
            context.on_message(f"BatchNorm after ReLU: {rewrite.folded} folded away, {rewrite.rescaled} rescaled into "
                               f"their convs: {len(model.graph.node)} nodes")
        if rewrite.dead_channels:
            context.on_message(f"{rewrite.dead_channels} BatchNorm channel(s) with running variance ~0 (never active "
                               "in training; amplified ~gamma/sqrt(eps) if they fire): they keep their scale in the BN")
        return replace(record, fp32=path).with_notes(nodes={"simplified": len(model.graph.node), **rewrite.to_dict()})
