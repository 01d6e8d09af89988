"""onnxruntime.quantization, wrapped: pre-processing, calibration into ORT's cache, static INT8 quantization.

Calibration runs once per model (the chosen method's tensor ranges go to ORT's calibration cache file);
every quantization after that - the first one and each attempt of the gate - reuses the ranges.
Every exception ORT raises becomes a QuantizationError naming the stage.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from toolchain.errors import ArtifactError, QuantizationError, UsageError
from toolchain.fsutil import disk_error
from toolchain.graph.qdq import drop_unused_opset_imports, keep_float_weights
from toolchain.pipeline.config import QuantSettings

CALIBRATION_BATCH = 32

def even_batch(count: int, largest: int = CALIBRATION_BATCH) -> int:
    """The largest batch size up to ``largest`` that divides ``count`` images into equal batches.

    ORT's histogram calibrators (percentile, entropy) stack the batches' outputs into one array and fail
    ("inhomogeneous shape") when the last batch is shorter: 100 calibration images in batches of 32 did.
    """
    return next(size for size in range(min(largest, max(count, 1)), 0, -1) if count % size == 0)


class ImageCalibrationReader(CalibrationDataReader):
    """ORT's calibration contract over preprocessed images, in batches of one size (see `even_batch`)."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = CALIBRATION_BATCH) -> None:
        self.images = images
        self.input_name = input_name
        self.batch_size = even_batch(len(images), batch_size)
        self._batches: Iterator[dict[str, np.ndarray]] = iter(())
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = iter([{self.input_name: self.images[start:start + self.batch_size]}
                              for start in range(0, len(self.images), self.batch_size)])

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    # onnxruntime.quantization reports through the root logger ("Please consider pre-processing...")
    # and print() ("Finding optimal threshold..."): on stdout that would corrupt `--json` output.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _ort_enums(settings: QuantSettings) -> tuple:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[settings.with_method().method]
    quant_format = QuantFormat.QDQ if settings.format == "qdq" else QuantFormat.QOperator
    activation = QuantType.QUInt8 if settings.activation_type == "uint8" else QuantType.QInt8
    return method, quant_format, activation, QuantType.QInt8


def ort_failure(stage: str, exc: Exception, model: Path | str) -> QuantizationError | ArtifactError:
    """ORT's error as the stage's failure on ``model`` (a path, or what to call it; a full disk as what it is)."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return disk_error(exc) or QuantizationError(
        f"{stage} of {model.name if isinstance(model, Path) else model} failed: {detail[:200]}",
        "use ops of the default ONNX domain (custom or contrib ops cannot be quantized here), or try --format qdq "
        "or --method minmax; rerun with --debug for the traceback")


def prepare_for_quantization(source: Path, destination: Path, name: str | None = None) -> None:
    """ORT's pre-processing: symbolic shape inference, graph optimisation, ONNX shape inference.

    The quantizer needs every activation's shape and type; without this step it skips tensors
    it cannot type and warns.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, destination = Path(source).resolve(), Path(destination).resolve()  # before the cwd changes
    try:
        # in a scratch cwd: ORT's symbolic shape inference, when incomplete, saves sym_shape_infer_temp.onnx and
        # its external .data files into the current folder (it left them in users' folders and this repo)
        with tempfile.TemporaryDirectory(prefix="toolchain-shapes-") as scratch, contextlib.chdir(scratch), quiet_ort():
            quant_pre_process(str(source), str(destination), skip_symbolic_shape=False)
    except Exception as exc:  # shape inference raises assorted errors on unusual graphs
        raise ort_failure("quantization pre-processing (shape inference)", exc, name or source) from None


def calibrate(model: Path, images: np.ndarray, input_name: str, settings: QuantSettings, cache: Path) -> float:
    """Collect the activation ranges of the chosen method once, into ORT's calibration cache file."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    started = time.perf_counter()
    settings = settings.with_method()
    method = _ort_enums(settings)[0]
    options: dict = {}
    if settings.method == "entropy":
        options = {"num_bins": settings.entropy_bins, "num_quantized_bins": 128}
    elif settings.method == "percentile":
        # unsigned activations only use [0, max]; a symmetric range would waste half the codes
        options = {"num_bins": settings.percentile_bins, "percentile": settings.percentile,
                   "symmetric": settings.activation_type == "int8"}
    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    with tempfile.TemporaryDirectory(prefix="toolchain-calibrate-") as scratch, quiet_ort():
        try:
            calibrator = create_calibrator(model, op_types, augmented_model_path=str(Path(scratch) / "augmented.onnx"),
                                           calibrate_method=method, extra_options=options)
            calibrator.collect_data(ImageCalibrationReader(images, input_name))
            save_tensors_data(calibrator.compute_data(), cache)
        except Exception as exc:  # ORT raises ValueError/RuntimeError/Fail for bad graphs or data
            raise ort_failure(f"{settings.method} calibration", exc, Path(model)) from None
    return time.perf_counter() - started


def quantized_op_types(quant_format: str) -> list[str]:
    """The op types ORT's quantizer converts in a format: QOperator has its QLinear ops (no BatchNormalization,
    which stays float between a dequantize and a quantize); QDQ wraps those and its own registry's."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(QLinearOpsRegistry) if quant_format == "qoperator" else sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def quantize_static_int8(model: Path, output: Path, settings: QuantSettings, cache: Path,
                         keep_float: Sequence[str] = (), quant_format: str | None = None,
                         op_types: Sequence[str] | None = None) -> Path:
    """Quantize with the cached calibration ranges; ``keep_float`` nodes stay in float.

    ``quant_format`` overrides the settings' format, ``op_types`` the op types quantized (default: what
    the settings' format converts): a QDQ twin of a QOperator model quantizes only what that model does.
    """
    from onnxruntime.quantization import quantize_static

    settings = settings.resolved()[0]
    method, ort_format, activation, weight = _ort_enums(replace(settings, format=quant_format or settings.format))
    try:
        with quiet_ort():
            quantize_static(str(model), str(output), None, quant_format=ort_format, per_channel=settings.per_channel,
                            reduce_range=settings.reduce_range, activation_type=activation, weight_type=weight,
                            nodes_to_exclude=list(settings.exclude_nodes) + list(keep_float),
                            op_types_to_quantize=list(op_types or quantized_op_types(settings.format)),
                            calibrate_method=method, calibration_cache_path=str(cache))
    except Exception as exc:  # the quantizer raises assorted errors on unusual graphs
        raise ort_failure("static INT8 quantization", exc, Path(model)) from None
    keep_float_weights(output, list(settings.exclude_nodes) + list(keep_float))
    drop_unused_opset_imports(output)
    return output


def check_node_names(model: Path, names: Sequence[str]) -> None:
    """Fail if --exclude-nodes names a node the model does not have."""
    import difflib

    present = {node.name for node in onnx.load(str(model)).graph.node}
    unknown = [name for name in names if name not in present]
    if unknown:
        close = difflib.get_close_matches(unknown[0], present, n=3)
        raise UsageError(f"--exclude-nodes: no node named {unknown[0]!r} in the model",
                         f"did you mean {', '.join(close)}?" if close else
                         "node names are those of the FP32 model (see the manifest's sensitivity list)")
