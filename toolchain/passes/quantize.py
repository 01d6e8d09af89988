"""The quantize pass: ORT's pre-processing, calibration once (ranges cached), static INT8 of every node."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain.pipeline.config import GATE_FIELDS, QuantSettings
from toolchain.pipeline.passes import ModelRecord, Pass, register_pass

if TYPE_CHECKING:
    from toolchain.pipeline.context import PassContext


def describe(settings: QuantSettings) -> str:
    """The INT8 flavour in words, e.g. "qoperator U8S8, per-channel 7-bit weights"."""
    return (f"{settings.format} {'U8S8' if settings.activation_type == 'uint8' else 'S8S8'}, "
            f"{'per-channel' if settings.per_channel else 'per-tensor'} "
            f"{'7-bit ' if settings.reduce_range else ''}weights")


@register_pass
class QuantizePass(Pass):
    """``config`` is the run's resolved `QuantSettings`; the gate's own fields are the gate pass's config."""

    name = "quantize"
    version = 2  # 2: --method auto calibrates with its first method

    def config_record(self) -> dict[str, Any]:
        return {key: value for key, value in self.config.to_dict().items() if key not in GATE_FIELDS}

    def run(self, record: ModelRecord, context: "PassContext", folder: Path) -> ModelRecord:
        from toolchain.pipeline.config import DEFAULTS_REASON
        from toolchain.quantization.ort import calibrate, check_node_names, prepare_for_quantization, quantize_static_int8

        settings: QuantSettings = self.config
        prepared, cache = folder / "prepared.onnx", folder / "calibration.json"
        source = getattr(context.source, "path", None)
        prepare_for_quantization(record.fp32, prepared, f"the model from {source}" if source else None)
        check_node_names(prepared, settings.exclude_nodes)
        calibration = context.calibration
        method = settings.calibration_methods[0]
        context.on_message(f"quantizing: {method} calibration on {len(calibration)} images, {describe(settings)}"
                           + (" (--method auto: more calibrations follow if INT8 misses the gate)"
                              if settings.method == "auto" else ""))
        started = time.perf_counter()
        calibrate(prepared, calibration.images, record.input_name, settings.with_method(method), cache)
        calibration_seconds = time.perf_counter() - started
        int8 = quantize_static_int8(prepared, folder / "model.int8.onnx", settings, cache)
        return replace(record, int8=int8).with_files(prepared=prepared, calibration_cache=cache).with_notes(
            quantization={"settings": settings.to_dict(), "defaults_reason": DEFAULTS_REASON, "method": method,
                          "calibration_seconds": calibration_seconds})
