"""The simplify pass: onnxsim (constant folding, redundant-node removal)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from toolchain.pipeline.passes import ModelRecord, Pass, register_pass

if TYPE_CHECKING:
    from toolchain.pipeline.context import PassContext


@register_pass
class SimplifyPass(Pass):
    name = "simplify"
    checks_parity = True

    def run(self, record: ModelRecord, context: "PassContext", folder: Path) -> ModelRecord:
        import onnx
        import onnxsim

        from toolchain.graph.simplify import onnxsim_model

        model = onnx.load(str(record.fp32))
        simplified = onnxsim_model(model, record.fp32.name)
        path = folder / "model.onnx"
        onnx.save(simplified, str(path))
        context.on_message(f"simplified (onnxsim {onnxsim.__version__}): {len(model.graph.node)} -> "
                           f"{len(simplified.graph.node)} nodes")
        return replace(record, fp32=path).with_notes(nodes={"simplified": len(simplified.graph.node)})
