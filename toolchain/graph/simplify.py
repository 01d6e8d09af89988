"""onnxsim (constant folding, redundant-node removal), never silently skipped, then BN folding.

onnxsim checks its own output against the input on random data; a failed check or any exception is a
`SimplifyError` (the pipeline also re-checks parity on real images). onnxsim 0.8 writes a long report
into metadata_props (every removed node and value, ~10 KB); it is dropped from the model, and the
node counts are returned for the manifest instead.
Then the BatchNorms that sit after a ReLU, which onnxsim cannot fold, are folded where that is exact
(`toolchain.graph.batchnorm`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from toolchain.graph.batchnorm import rewrite_batchnorm_after_relu
from toolchain.errors import SimplifyError
from toolchain.fsutil import disk_error

_ONNXSIM_PREFIX = "onnxsim."


@dataclass(frozen=True)
class SimplifyResult:
    """What onnxsim wrote: node counts before and after, and how long it took."""

    path: Path
    nodes_before: int
    nodes_after: int
    seconds: float
    onnxsim_version: str
    batchnorm_folded: int
    batchnorm_rescaled: int = 0


def onnxsim_model(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """onnxsim's simplification of ``model`` (``name`` for messages), its report dropped from the metadata."""
    import onnxsim

    try:
        simplified, check_ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises RuntimeError, ValueError, onnx errors...
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise disk_error(exc) or SimplifyError(f"onnxsim failed on {name}: {detail[:200]}",
                                               "rerun with --no-simplify to keep the unsimplified model") from None
    if not check_ok:
        raise SimplifyError(f"onnxsim's simplified {name} does not compute what the original does",
                            "rerun with --no-simplify to keep the unsimplified model")
    report = [entry for entry in simplified.metadata_props if entry.key.startswith(_ONNXSIM_PREFIX)]
    for entry in report:
        simplified.metadata_props.remove(entry)
    return simplified


def simplify_onnx(source: Path, destination: Path) -> SimplifyResult:
    """Simplify ``source`` into ``destination`` with onnxsim, then fold or rescale BatchNorms after ReLUs (both passes)."""
    import onnxsim

    started = time.perf_counter()
    model = onnx.load(str(source))
    simplified = onnxsim_model(model, source.name)
    rewrite = rewrite_batchnorm_after_relu(simplified)
    onnx.save(simplified, str(destination))
    return SimplifyResult(path=destination, nodes_before=len(model.graph.node), nodes_after=len(simplified.graph.node),
                          seconds=time.perf_counter() - started, onnxsim_version=onnxsim.__version__,
                          batchnorm_folded=rewrite.folded, batchnorm_rescaled=rewrite.rescaled)
