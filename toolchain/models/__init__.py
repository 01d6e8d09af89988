"""Model zoo: pure torch, one registry (no onnx/onnxruntime/paramiko imports here)."""

from toolchain.models.registry import (
    ModelSpec,
    PaperResult,
    create_model,
    families,
    format_width,
    list_models,
    paper_results,
    register_model,
    resolve,
)
from toolchain.models.stats import count_macs, count_parameters, state_dict_bytes

__all__ = [
    "ModelSpec", "PaperResult", "create_model", "families", "format_width", "list_models",
    "paper_results", "register_model", "resolve", "count_macs", "count_parameters",
    "state_dict_bytes",
]
