"""Stage 3: static INT8 quantization with onnxruntime.quantization, behind an accuracy gate.

Calibration runs once per model (the chosen method's tensor ranges go to ORT's calibration cache);
every quantization after that - the first one and each attempt of the gate - reuses the ranges.

The accuracy gate: FP32 and INT8 top-1 on the eval set. When the INT8 drop exceeds ``max_drop``,
every quantized node is scored by the quantization noise around it (signal-to-quantization-noise
ratio of its weights and of the activations it reads and writes, from ORT's QDQ debugging tools,
measured on calibration images, not on the eval set) and the lowest-scoring nodes are kept in float,
as few as possible (doubling, then bisection), until the drop is within the gate.

Defaults (measured, see toolchain.settings.DEFAULTS_REASON): INT8 is not automatically faster on a CPU.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from toolchain.calibration import ImageSet
from toolchain.errors import AccuracyGateError, QuantizationError, UsageError
from toolchain.evaluate import accuracy_from_logits, onnx_logits
from toolchain.onnx_model import compact_names
from toolchain.settings import DEFAULTS_REASON, QuantSettings

CALIBRATION_BATCH = 32
# Images whose activations score the nodes for the gate (from the calibration set).
SENSITIVITY_IMAGES = 32
# The gate may keep at most this share of the quantizable nodes in float (else an "INT8" model
# would be a float model with extra steps).
DEFAULT_MAX_KEPT_FRACTION = 0.5
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
_SUFFIXES = ("_DequantizeLinear_Output", "_QuantizeLinear_Output", "_QuantizeLinear_Input")
_WEIGHT_SUFFIX = "_quantized"


@dataclass(frozen=True)
class NodeScore:
    """How much quantization noise surrounds a node: the lowest SQNR (dB) of its tensors."""

    node: str
    op_type: str
    sqnr_db: float
    tensor: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GateStep:
    """One quantization attempt: which nodes were kept in float and what the INT8 model scored."""

    kept_float: tuple[str, ...]
    int8_top1: float
    drop_pp: float
    seconds: float

    def to_dict(self) -> dict:
        return {"kept_float": list(self.kept_float), "int8_top1": self.int8_top1, "drop_pp": self.drop_pp,
                "seconds": self.seconds}


@dataclass
class QuantizationResult:
    """The INT8 model that passed the gate, and how it got there."""

    path: Path
    settings: QuantSettings
    fp32_top1: float
    int8_top1: float
    drop_pp: float
    eval_count: int
    kept_float: list[str]
    quantizable_nodes: int
    steps: list[GateStep]
    sensitivity: list[NodeScore] = field(default_factory=list)
    int8_logits: np.ndarray | None = None
    calibration_seconds: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """The manifest's "quantization" and "gate" records (logits left out)."""
        return {"settings": self.settings.to_dict(), "defaults_reason": DEFAULTS_REASON,
                "fp32_top1": self.fp32_top1, "int8_top1": self.int8_top1, "drop_pp": self.drop_pp,
                "max_drop_pp": self.settings.max_drop, "eval_count": self.eval_count,
                "gate_engaged": len(self.steps) > 1, "kept_float": list(self.kept_float),
                "excluded_by_user": list(self.settings.exclude_nodes),
                "quantizable_nodes": self.quantizable_nodes,
                "steps": [step.to_dict() for step in self.steps],
                "sensitivity": [score.to_dict() for score in self.sensitivity],
                "calibration_seconds": self.calibration_seconds, "seconds": self.seconds}


class ImageCalibrationReader(CalibrationDataReader):
    """ORT's calibration contract over preprocessed images, in fixed-size batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = CALIBRATION_BATCH) -> None:
        self.images = images
        self.input_name = input_name
        self.batch_size = batch_size
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
def _quiet_ort() -> Iterator[None]:
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
              "percentile": CalibrationMethod.Percentile}[settings.method]
    quant_format = QuantFormat.QDQ if settings.format == "qdq" else QuantFormat.QOperator
    activation = QuantType.QUInt8 if settings.activation_type == "uint8" else QuantType.QInt8
    return method, quant_format, activation, QuantType.QInt8


def _failure(stage: str, exc: Exception) -> QuantizationError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return QuantizationError(f"{stage} failed: {detail[:200]}",
                             "try --format qdq or --method minmax; rerun with --debug for the traceback")


def prepare_for_quantization(source: Path, destination: Path) -> None:
    """ORT's pre-processing: symbolic shape inference, graph optimisation, ONNX shape inference.

    The quantizer needs every activation's shape and type; without this step it skips tensors
    it cannot type and warns.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _quiet_ort():
            quant_pre_process(str(source), str(destination), skip_symbolic_shape=False)
    except Exception as exc:  # shape inference raises assorted errors on unusual graphs
        raise _failure("quantization pre-processing (shape inference)", exc) from None


def calibrate(model: Path, images: np.ndarray, input_name: str, settings: QuantSettings, cache: Path) -> float:
    """Collect the activation ranges of the chosen method once, into ORT's calibration cache file."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    started = time.perf_counter()
    method = _ort_enums(settings)[0]
    options: dict = {}
    if settings.method == "entropy":
        options = {"num_bins": settings.entropy_bins, "num_quantized_bins": 128}
    elif settings.method == "percentile":
        # unsigned activations only use [0, max]; a symmetric range would waste half the codes
        options = {"num_bins": settings.percentile_bins, "percentile": settings.percentile,
                   "symmetric": settings.activation_type == "int8"}
    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    with tempfile.TemporaryDirectory(prefix="toolchain-calibrate-") as scratch, _quiet_ort():
        try:
            calibrator = create_calibrator(model, op_types, augmented_model_path=str(Path(scratch) / "augmented.onnx"),
                                           calibrate_method=method, extra_options=options)
            calibrator.collect_data(ImageCalibrationReader(images, input_name))
            save_tensors_data(calibrator.compute_data(), cache)
        except Exception as exc:  # ORT raises ValueError/RuntimeError/Fail for bad graphs or data
            raise _failure(f"{settings.method} calibration", exc) from None
    return time.perf_counter() - started


def quantize_static_int8(model: Path, output: Path, settings: QuantSettings, cache: Path,
                         keep_float: Sequence[str] = (), quant_format: str | None = None) -> Path:
    """Quantize with the cached calibration ranges; ``keep_float`` nodes stay in float."""
    from onnxruntime.quantization import quantize_static

    settings = settings.resolved()[0]
    method, ort_format, activation, weight = _ort_enums(replace(settings, format=quant_format or settings.format))
    try:
        with _quiet_ort():
            quantize_static(str(model), str(output), None, quant_format=ort_format, per_channel=settings.per_channel,
                            reduce_range=settings.reduce_range, activation_type=activation, weight_type=weight,
                            nodes_to_exclude=list(settings.exclude_nodes) + list(keep_float),
                            calibrate_method=method, calibration_cache_path=str(cache))
    except Exception as exc:  # the quantizer raises assorted errors on unusual graphs
        raise _failure("static INT8 quantization", exc) from None
    keep_float_weights(output, list(settings.exclude_nodes) + list(keep_float))
    drop_unused_opset_imports(output)
    return output


_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm")


def _input_channels(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> int | None:
    """Channels of a Conv/ConvTranspose/Gemm's data input (axis 1), from its weight's shape."""
    weight = constants.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None or len(weight.dims) < 2:
        return None
    attributes = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
    if node.op_type == "Conv":
        return int(weight.dims[1]) * int(attributes.get("group", 1))
    if node.op_type == "ConvTranspose":
        return int(weight.dims[0])
    if attributes.get("transA", 0):
        return None
    return int(weight.dims[1] if attributes.get("transB", 0) else weight.dims[0])


def keep_float_weights(path: Path, float_nodes: Sequence[str]) -> int:
    """Make the nodes kept in float stay float under onnxruntime's own optimiser; returns how many it changed.

    onnxruntime >= 1.20's WeightBiasQuantization (a basic-level graph optimisation, on by default)
    quantizes the float weight of any Conv/Gemm whose input comes from a DequantizeLinear with a scalar
    scale: per tensor, symmetric INT8. A node the gate keeps in float would run with per-tensor INT8
    weights, which wrecks a layer whose channels differ in scale (measured: hps-06-0.5x with one such conv
    "kept in float" fell from 80.2 % to 41.0 % top-1). The input's DequantizeLinear is replaced by a per-axis
    one whose scale and zero point repeat the same value for every channel: the same numbers, but not a
    scalar scale, so the optimisation leaves the node alone. Needs opset 13 (per-axis DequantizeLinear).
    """
    if not float_nodes:
        return 0
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    opset = next((item.version for item in model.opset_import if item.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        return 0
    constants = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    wanted = set(float_nodes)
    changed = 0
    nodes = list(graph.node)
    rebuilt: list[onnx.NodeProto] = []
    for node in nodes:
        dq = producers.get(node.input[0]) if node.name in wanted and node.op_type in _WEIGHTED_OPS else None
        channels = _input_channels(node, constants) if dq is not None else None
        scale = (numpy_helper.to_array(constants[dq.input[1]])
                 if channels and dq.op_type == "DequantizeLinear" and dq.input[1] in constants else None)
        if scale is not None and scale.size == 1:
            scale = scale.reshape(())
            inputs = [dq.input[0], f"{node.name}_input_scale_per_axis"]
            graph.initializer.append(numpy_helper.from_array(np.full(channels, scale, dtype=scale.dtype), inputs[1]))
            if len(dq.input) > 2 and dq.input[2]:
                zero_point = numpy_helper.to_array(constants[dq.input[2]]).reshape(())
                inputs.append(f"{node.name}_input_zero_point_per_axis")
                graph.initializer.append(numpy_helper.from_array(
                    np.full(channels, zero_point, dtype=zero_point.dtype), inputs[2]))
            output = f"{node.name}_input_dequantized_per_axis"
            rebuilt.append(onnx.helper.make_node("DequantizeLinear", inputs, [output], name=f"{node.name}_input_dq",
                                                 axis=1))
            node.input[0] = output
            changed += 1
        rebuilt.append(node)
    if not changed:
        return 0
    used = {name for node in rebuilt for name in node.input}
    graph_outputs = {value.name for value in graph.output}
    rebuilt = [node for node in rebuilt if node.op_type != "DequantizeLinear"
               or any(name in used or name in graph_outputs for name in node.output)]
    del graph.node[:]
    graph.node.extend(rebuilt)
    used = {name for node in rebuilt for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(path))
    return changed


def drop_unused_opset_imports(path: Path) -> None:
    """Remove the opset imports of domains no node uses, in place.

    ORT's pre-processing saves its optimised graph with every domain the runtime registers
    (com.microsoft.nchwc, ai.onnx.preview.training, org.pytorch.aten, ...). Unused, they still make an
    older runtime on a target refuse the file, and make deploy's opset check name domains the model
    does not need.
    """
    model = onnx.load(str(path))
    used = {node.domain or "" for node in model.graph.node} | {""}
    kept = [item for item in model.opset_import if (item.domain or "") in used]
    if len(kept) == len(model.opset_import):
        return
    del model.opset_import[:]
    model.opset_import.extend(kept)
    onnx.save(model, str(path))


def quantizable_nodes(qdq_model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes of a QDQ model that read at least one dequantized tensor (those the quantizer touched)."""
    dequantized = {node.output[0] for node in qdq_model.graph.node if node.op_type == "DequantizeLinear"}
    return [node for node in qdq_model.graph.node
            if node.op_type not in _QDQ_OPS and any(name in dequantized for name in node.input)]


def _strip(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def _channel_sqnr_db(reference: np.ndarray, approximation: np.ndarray, axis: int | None) -> float:
    """Mean over channels of the signal-to-quantization-noise ratio in dB (silent channels skipped).

    Per channel, not per tensor: one outlier channel that stretches a tensor's range wipes out the
    other channels, yet dominates (and so hides in) a whole-tensor ratio.
    """
    if axis is None or reference.ndim < 2:
        reference, approximation = reference.reshape(1, -1), approximation.reshape(1, -1)
    else:
        reference = np.moveaxis(reference, axis, 0).reshape(reference.shape[axis], -1)
        approximation = np.moveaxis(approximation, axis, 0).reshape(reference.shape[0], -1)
    reference, approximation = reference.astype(np.float64), approximation.astype(np.float64)
    signal = np.square(reference).sum(axis=1)
    noise = np.square(reference - approximation).sum(axis=1)
    audible = signal > max(signal.max(), 1e-30) * 1e-12
    if not audible.any():
        return math.inf
    return float(np.mean(10.0 * np.log10(signal[audible] / np.maximum(noise[audible], 1e-30))))


def _fake_quantize(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """What QuantizeLinear -> DequantizeLinear makes of float values (per-tensor parameters)."""
    info = np.iinfo(zero_point.dtype)
    codes = np.clip(np.round(values / scale) + zero_point.astype(np.int64), info.min, info.max)
    return ((codes - zero_point.astype(np.int64)) * scale).astype(np.float32)


def _float_activations(model_path: Path, names: Sequence[str], images: np.ndarray, input_name: str
                       ) -> dict[str, np.ndarray]:
    """The float model's value of each named tensor on these images (intermediate tensors made outputs)."""
    from toolchain.evaluate import open_session

    model = onnx.load(str(model_path))
    present = {value.name for value in model.graph.output}
    wanted = [name for name in names if name != input_name]
    for name in wanted:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory(prefix="toolchain-activations-") as scratch:
        augmented = Path(scratch) / "activations.onnx"
        onnx.save(model, str(augmented))
        values = open_session(augmented).run(wanted, {input_name: images})
    found = dict(zip(wanted, values))
    if input_name in names:
        found[input_name] = images
    return found


def score_nodes(float_model: Path, qdq_model: Path, images: np.ndarray, input_name: str) -> list[NodeScore]:
    """Score every quantized node by the lowest per-channel SQNR of its weights and activations.

    Local noise only, measured on the float model's own activations: each activation the QDQ model
    quantizes is fake-quantized with that model's scale and zero point; weights are compared with
    their dequantized values (ORT's qdq_loss_debug.create_weight_matching). Errors accumulated from
    upstream nodes do not count against a node. Lowest first: the nodes that lose most to INT8.
    """
    from onnx import numpy_helper
    from onnxruntime.quantization.qdq_loss_debug import create_weight_matching

    model = onnx.load(str(qdq_model))
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    parameters = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in constants and len(node.input) > 2:
            parameters[_strip(node.input[0])] = (constants[node.input[1]], constants[node.input[2]])
    activations = _float_activations(float_model, list(parameters), images, input_name)
    activation_sqnr = {name: _channel_sqnr_db(value, _fake_quantize(value, *parameters[name]), axis=1)
                       for name, value in activations.items()}
    with _quiet_ort():
        weights = create_weight_matching(str(float_model), str(qdq_model))
    weight_sqnr = {name: _channel_sqnr_db(pair["float"], pair["dequantized"], axis=0)
                   for name, pair in weights.items()}
    producers = {output: node for node in model.graph.node for output in node.output}
    scores = []
    for node in quantizable_nodes(model):
        measured: list[tuple[float, str]] = []
        for name in list(node.input) + list(node.output):
            producer = producers.get(name)
            source = producer.input[0] if producer is not None and producer.op_type == "DequantizeLinear" else name
            if source.endswith(_WEIGHT_SUFFIX) and source[:-len(_WEIGHT_SUFFIX)] in weight_sqnr:
                weight = source[:-len(_WEIGHT_SUFFIX)]
                measured.append((weight_sqnr[weight], weight))
            elif _strip(source) in activation_sqnr:
                measured.append((activation_sqnr[_strip(source)], _strip(source)))
        if measured:
            sqnr, tensor = min(measured)
            scores.append(NodeScore(node.name, node.op_type, round(float(sqnr), 3), tensor))
    return sorted(scores, key=lambda score: (score.sqnr_db, score.node))


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


Messages = Callable[[str], None]


def quantize_with_gate(fp32_model: Path, output: Path, settings: QuantSettings, calibration: ImageSet,
                       evaluation: ImageSet, fp32_logits: np.ndarray, input_name: str,
                       on_message: Messages = lambda _: None) -> QuantizationResult:
    """Calibrate, quantize, and keep the most sensitive nodes in float until top-1 drops <= max_drop.

    ``fp32_logits`` are the FP32 model's logits on the eval images; ``output`` receives the final
    INT8 model (names compacted). Raises AccuracyGateError with the numbers if no allowed set of
    float nodes brings the drop within the gate.
    """
    settings.validate()
    settings = settings.resolved()[0]
    started = time.perf_counter()
    labels = evaluation.labels
    if labels is None:
        raise QuantizationError("the eval set has no labels", "pass an eval set with labels (.npz with 'labels')")
    fp32_top1 = accuracy_from_logits(fp32_logits, labels).top1
    with tempfile.TemporaryDirectory(prefix="toolchain-quantize-") as scratch_name:
        scratch = Path(scratch_name)
        prepared, cache = scratch / "prepared.onnx", scratch / "calibration.json"
        prepare_for_quantization(fp32_model, prepared)
        check_node_names(prepared, settings.exclude_nodes)
        calibration_seconds = calibrate(prepared, calibration.images, input_name, settings, cache)
        qdq_twin = quantize_static_int8(prepared, scratch / "twin.qdq.onnx", settings, cache, quant_format="qdq")
        candidates = len(quantizable_nodes(onnx.load(str(qdq_twin))))
        attempts: dict[int, tuple[GateStep, Path, np.ndarray]] = {}

        def attempt(kept: tuple[str, ...]) -> GateStep:
            step_started = time.perf_counter()
            path = quantize_static_int8(prepared, scratch / f"int8-{len(attempts)}.onnx", settings, cache, kept)
            logits = onnx_logits(path, evaluation.images)
            top1 = accuracy_from_logits(logits, labels).top1
            step = GateStep(kept, top1, round(fp32_top1 - top1, 4), time.perf_counter() - step_started)
            attempts[len(kept)] = (step, path, logits)
            on_message(f"INT8 top-1 {top1:.2f}% (FP32 {fp32_top1:.2f}%, drop {step.drop_pp:+.2f} pp)"
                       + (f" with {len(kept)} node(s) kept in float" if kept else ""))
            return step

        first = attempt(())
        ranking: list[NodeScore] = []
        if first.drop_pp > settings.max_drop:
            limit = settings.max_kept_float
            limit = math.ceil(candidates * DEFAULT_MAX_KEPT_FRACTION) if limit is None else limit
            on_message(f"drop {first.drop_pp:.2f} pp exceeds --max-drop {settings.max_drop:g}: scoring "
                       f"{candidates} quantized nodes, keeping at most {limit} in float")
            ranking = score_nodes(prepared, qdq_twin, calibration.images[:SENSITIVITY_IMAGES], input_name)
            names = tuple(score.node for score in ranking)
            limit = min(limit, len(names))

            def passes(count: int) -> bool:
                step = attempts[count][0] if count in attempts else attempt(names[:count])
                return step.drop_pp <= settings.max_drop

            low, high = 0, 1
            while high <= limit and not passes(high):
                low, high = high, high * 2
            if high > limit:
                if limit > low and passes(limit):
                    high = limit
                else:
                    best = min(step.drop_pp for step, _, _ in attempts.values())
                    raise AccuracyGateError(
                        f"INT8 top-1 drop stays above --max-drop {settings.max_drop:g} pp: {first.drop_pp:.2f} pp "
                        f"as quantized, best {best:.2f} pp with up to {limit} of {candidates} nodes kept in float "
                        f"(FP32 {fp32_top1:.2f}%, {len(labels)} eval images)",
                        "raise --max-drop or --max-kept-float, or try --method entropy/percentile or more "
                        "calibration images")
            while high - low > 1:  # the smallest passing count between a failing low and a passing high
                middle = (low + high) // 2
                low, high = (low, middle) if passes(middle) else (middle, high)
            chosen = high
        else:
            chosen = 0
        step, path, _ = attempts[chosen]
        compact_names(path)
        shutil.move(str(path), str(output))
    # the shipped file's own answers (renaming changes nothing, but what is recorded is what ships)
    logits = onnx_logits(output, evaluation.images)
    int8_top1 = accuracy_from_logits(logits, labels).top1
    return QuantizationResult(path=output, settings=settings, fp32_top1=fp32_top1, int8_top1=int8_top1,
                              drop_pp=round(fp32_top1 - int8_top1, 4), eval_count=int(len(labels)),
                              kept_float=list(step.kept_float), quantizable_nodes=candidates,
                              steps=[item[0] for item in attempts.values()],
                              sensitivity=ranking[:max(10, len(step.kept_float))], int8_logits=logits,
                              calibration_seconds=calibration_seconds, seconds=time.perf_counter() - started)
