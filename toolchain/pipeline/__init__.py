"""The host pipeline: passes over typed records, one runner, two workflows (`export`, `quantize`).

    passes.py     the Pass contract, ModelRecord, the pass registry
    runner.py     plans a list of passes, skips what is cached, writes lineage
    context.py    what every pass of a run may read (image sets, reference answers, parity tolerance)
    sources.py    where a run starts: a checkpoint or a foreign ONNX file
    workflows.py  `toolchain export` and `toolchain quantize` as lists of pass names
    config.py     the user-facing settings (export, quantization), validated and hashed

Nothing here imports torch or onnx at module level (see workflows.py for the cached path).
"""

from toolchain.pipeline.workflows import (DEFAULT_DATASET, EXPORT_PASSES, QUANTIZE_PASSES, QUICK_TRAIN, ExportRequest,
                                          PipelineResult, QuantizeRequest, artifact_name, cached_export, run_export,
                                          quantize_with_gate, run_quantize, stack_versions,
                                          with_resolved_quant)

__all__ = ["DEFAULT_DATASET", "EXPORT_PASSES", "ExportRequest", "PipelineResult", "QUANTIZE_PASSES", "QUICK_TRAIN",
           "QuantizeRequest", "artifact_name", "cached_export", "quantize_with_gate", "run_export", "run_quantize", "stack_versions",
           "with_resolved_quant"]
