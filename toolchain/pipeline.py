"""The host pipeline, stage by stage: checkpoint -> export -> simplify -> INT8 + accuracy gate -> artifact.

`run_export` serves `toolchain export` (a zoo model from a checkpoint), `run_quantize` serves
`toolchain quantize` (any NCHW ONNX image classifier). Both first compute the artifact id from their
inputs; an existing folder with that id is returned as it is (no work). A cached `run_export` with
an explicit checkpoint imports neither torch nor onnx: the id comes from the checkpoint's sha256,
its JSON sidecar, the settings and the calibration/eval definitions.

The library never prints: messages go to ``on_message``, training progress to ``on_train_progress``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from toolchain import __version__
from toolchain.artifacts import (EVALSET_NAME, FP32_NAME, INT8_NAME, MANIFEST_NAME, MANIFEST_SCHEMA, ArtifactStore,
                                 artifact_id, file_record, read_manifest, utc_now, write_evalset)
from toolchain.calibration import (DEFAULT_EVAL_COUNT, ImageSet, ImageSetDefinition, array_file_record,
                                   is_array_file, load_definition, resolve_calibration_arg)
from toolchain.errors import CalibrationError, CheckpointError, UsageError
from toolchain.fsutil import atomic_write_json
from toolchain.hashing import sha256_file
from toolchain.settings import QUANTIZE_PASSES, SIMPLIFY_PASSES, ExportSettings, QuantSettings

if TYPE_CHECKING:
    import numpy as np

    from toolchain.quantize import QuantizationResult
    from toolchain.train import TrainProgress

DEFAULT_DATASET = "fashion-mnist"
# No checkpoint given or found: two short epochs (30-40 s on 2 cores; hps-06-0.5x reaches ~81 % on
# Fashion-MNIST). One epoch is not enough: without an lr decay the BatchNorm running statistics lag the
# still-moving weights and eval-mode accuracy sits near 43 % (measured), which no quantizer can keep.
# One core is left free: torch's intra-op threads on every core of a busy 2-core machine made this
# training 10x slower (467 s vs 40 s with one thread, measured beside another CPU-bound job).
QUICK_TRAIN = {"epochs": 2, "train_limit": 10_000, "eval_limit": 1_000, "batch_size": 32, "lr": 0.05,
               "augment": False, "threads": max(1, (os.cpu_count() or 1) - 1)}
# The latency column of the export table: a quick in-process check with the agent's own timed loop.
QUICK_LATENCY = {"threads": 1, "batch": 1, "warmup": 20, "runs": 200}
METADATA_PREFIX = "toolchain."
_NAME_RE = re.compile(r"[^a-z0-9._-]+")

Messages = Callable[[str], None]
TrainProgressCallback = Callable[["TrainProgress"], None]


def _silent(_: str) -> None:
    """The default message sink."""


@dataclass(frozen=True)
class ExportRequest:
    """Everything `toolchain export` was asked to do."""

    model: str
    checkpoint: Path | None = None
    dataset: str | None = None  # default: the checkpoint's, else fashion-mnist
    data_dir: Path | None = None
    artifacts: Path = Path("artifacts")
    export: ExportSettings = field(default_factory=ExportSettings)
    quant: QuantSettings = field(default_factory=QuantSettings)
    calibration: str | None = None  # name under calibration/, a .toml, or a .npy/.npz of images
    eval_count: int = DEFAULT_EVAL_COUNT
    train_if_missing: bool = True


@dataclass(frozen=True)
class QuantizeRequest:
    """Everything `toolchain quantize` was asked to do."""

    onnx: Path
    name: str | None = None  # artifact folder name (default: the file's stem)
    calibration: str | None = None  # default: the dataset in the model's toolchain metadata
    eval_set: str | None = None  # default: the calibration definition on the test split
    data_dir: Path | None = None
    artifacts: Path = Path("artifacts")
    atol: float = ExportSettings.atol
    rtol: float = ExportSettings.rtol
    simplify: bool = True
    quant: QuantSettings = field(default_factory=QuantSettings)
    eval_count: int = DEFAULT_EVAL_COUNT


@dataclass
class PipelineResult:
    """An artifact folder, its manifest, and whether it was made by this run."""

    folder: Path
    manifest: dict[str, Any]
    cached: bool
    seconds: float


@dataclass(frozen=True)
class _Plan:
    """What decides an artifact: the hashed inputs, and the image sets to draw."""

    model: str
    inputs: dict[str, Any]
    calibration: ImageSetDefinition | Path
    evaluation: ImageSetDefinition | Path

    @property
    def artifact_id(self) -> str:
        return artifact_id(self.inputs)


def _check_eval_count(count: int) -> None:
    if count < 1:
        raise UsageError(f"--eval-count must be at least 1, got {count}", "pass e.g. --eval-count 500")


def _image_set_spec(value: str) -> tuple[ImageSetDefinition | Path, dict[str, Any]]:
    """A --calibration / --eval-set value as (definition or array file, what the hash records)."""
    if is_array_file(value):
        path = Path(value).expanduser()
        return path, array_file_record(path)
    definition = load_definition(value)
    return definition, definition.content()


def _read_sidecar(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's JSON sidecar as plain data (no torch), or None."""
    try:
        data = json.loads(checkpoint.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _plan_export(request: ExportRequest, model: str, checkpoint_sha256: str,
                 sidecar: dict[str, Any] | None) -> _Plan:
    """The hashed inputs of an export; the same for the cached path (sidecar JSON) and the full one."""
    dataset = sidecar.get("dataset") if sidecar else (request.dataset or DEFAULT_DATASET)
    if sidecar and request.dataset and request.dataset != dataset:
        raise UsageError(f"the checkpoint was trained on {dataset}, not {request.dataset}",
                         f"drop --dataset, or pass a checkpoint trained on {request.dataset}")
    normalization = {"mean": sidecar.get("mean"), "std": sidecar.get("std")} if sidecar else None
    calibration, calibration_record = _image_set_spec(resolve_calibration_arg(request.calibration, dataset))
    if isinstance(calibration, ImageSetDefinition) and calibration.preprocessing != "normalize":
        raise CalibrationError(f"calibration set {calibration.name} uses preprocessing "
                               f"{calibration.preprocessing!r}, but zoo models are fed normalised images",
                               "use preprocessing = \"normalize\" (mean/std come from the checkpoint)")
    evaluation = ImageSetDefinition(name=f"{dataset}-test", dataset=dataset, split="test", count=request.eval_count,
                                    description="eval set: random test images")
    inputs = {"kind": "export", "model": model, "checkpoint_sha256": checkpoint_sha256, "dataset": dataset,
              "data_dir": str(request.data_dir) if request.data_dir else None, "normalization": normalization,
              "export": request.export.to_dict(), "quantization": request.quant.to_dict(),
              "calibration": calibration_record, "evalset": evaluation.content(), "toolchain": __version__,
              "graph_passes": list(SIMPLIFY_PASSES) if request.export.simplify else (),
              "quantize_passes": list(QUANTIZE_PASSES), "stack": stack_versions()}
    return _Plan(model, inputs, calibration, evaluation)


def _cached(store: ArtifactStore, plan: _Plan, started: float) -> PipelineResult | None:
    folder = store.find(plan.model, plan.artifact_id)
    if folder is None:
        return None
    return PipelineResult(folder, read_manifest(folder), cached=True, seconds=time.perf_counter() - started)


Request = TypeVar("Request", ExportRequest, QuantizeRequest)


def with_resolved_quant(request: Request) -> tuple[Request, str | None]:
    """The request with its quantization settings decided for this host (see QuantSettings.resolved)."""
    quant, reason = request.quant.resolved()
    return replace(request, quant=quant), reason


def cached_export(request: ExportRequest) -> PipelineResult | None:
    """The artifact of an export with an explicit checkpoint, if it exists (no torch, no onnx)."""
    started = time.perf_counter()
    if request.checkpoint is None or not request.checkpoint.is_file():
        return None
    request = with_resolved_quant(request)[0]
    sidecar = _read_sidecar(request.checkpoint)
    model = sidecar.get("model") if sidecar else request.model
    if model != request.model:  # another spelling of the name (or another model): the full path decides
        return None
    plan = _plan_export(request, model, sha256_file(request.checkpoint), sidecar)
    return _cached(ArtifactStore(request.artifacts), plan, started)


def _find_or_train_checkpoint(request: ExportRequest, on_message: Messages,
                              on_train_progress: TrainProgressCallback | None) -> Path:
    from toolchain.checkpoints import find_latest_checkpoint, read_info
    from toolchain.models import resolve

    name = resolve(request.model).name
    dataset = request.dataset or DEFAULT_DATASET
    found = find_latest_checkpoint(request.artifacts, name, dataset)
    if found is not None:
        info = read_info(found)
        unfinished = (f" (epoch {info.epoch} of {info.epochs}: that run stopped early)"
                      if info is not None and info.epoch < info.epochs else "")
        on_message(f"checkpoint: the newest trained {name} on {dataset}: {found}{unfinished}")
        return found
    if not request.train_if_missing:
        raise CheckpointError(f"no trained checkpoint of {name} on {dataset} under {request.artifacts}",
                              f"pass --checkpoint PATH, or train one: toolchain train --model {name}")
    from toolchain.train import TrainConfig, train_model

    on_message(f"no trained checkpoint of {name} on {dataset} under {request.artifacts}: training one now with a "
               f"short budget ({QUICK_TRAIN['epochs']} epochs on {QUICK_TRAIN['train_limit']:,} images); for a real "
               f"model run `toolchain train --model {name}` first")
    config = TrainConfig(model=name, dataset=dataset, data_dir=request.data_dir, artifacts=request.artifacts,
                         **QUICK_TRAIN)
    result = train_model(config, on_progress=on_train_progress)
    on_message(f"trained: test top-1 {result.info.metrics.get('test_top1', float('nan')):.2f}% -> {result.checkpoint}")
    return result.checkpoint


_STACK = ("torch", "onnx", "onnxruntime", "onnxsim", "numpy")


def stack_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape an artifact, read from package metadata.

    Part of the artifact hash, so upgrading onnxruntime or onnxsim makes a new artifact instead of
    re-using one the new stack never produced; metadata, not imports, keeps the cached path fast.
    """
    versions: dict[str, str | None] = {}
    for package in _STACK:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _versions() -> dict[str, str]:
    import numpy
    import onnx
    import onnxruntime
    import onnxsim

    versions = {"toolchain": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
                "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "onnxsim": onnxsim.__version__}
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:  # `quantize` of a foreign model does not need torch
        pass
    return versions


def _load_image_set(spec: ImageSetDefinition | Path, what: str, mean: Any, std: Any,
                    data_dir: Path | str | None) -> ImageSet:
    from toolchain.calibration import load_array_file, load_image_set

    if isinstance(spec, Path):
        return load_array_file(spec, what)
    return load_image_set(spec, mean, std, data_dir)


def quick_latency(models: dict[str, Path], images: "np.ndarray") -> dict[str, Any]:
    """p50/mean/... latency of each model with the agent's timed loop, in this process (QUICK_LATENCY)."""
    from toolchain.evaluate import open_session
    from toolchain.remote.agent.bench_agent import batches_of, cpu_model, latency_summary, timed_runs

    record: dict[str, Any] = {**QUICK_LATENCY, "cpu": cpu_model(), "scope": (
        "host quick check in-process; `toolchain bench --target local` runs the full protocol")}
    for variant, path in models.items():
        session = open_session(path, QUICK_LATENCY["threads"])
        feeds = [{session.get_inputs()[0].name: batch} for batch in batches_of(images, QUICK_LATENCY["batch"])]
        latencies, _ = timed_runs(session, feeds, QUICK_LATENCY["warmup"], QUICK_LATENCY["runs"], 0.0)
        record[variant] = latency_summary(latencies)
    record["int8_over_fp32_p50"] = record["int8"]["p50"] / record["fp32"]["p50"]
    return record


def _finish_artifact(stage: Path, plan: _Plan, calibration: ImageSet, evaluation: ImageSet,
                     fp32_logits: "np.ndarray", quant: QuantSettings, input_name: str, output_name: str,
                     record: dict[str, Any], timings: dict[str, float], on_message: Messages,
                     reduce_range_reason: str | None = None) -> dict[str, Any]:
    """Quantize behind the gate, write the eval set and the manifest into ``stage``; returns the manifest.

    ``reduce_range_reason``: why 7-bit weights were chosen for this host (reported and recorded).
    """
    from toolchain.evaluate import accuracy_from_logits
    from toolchain.onnx_model import count_nodes
    from toolchain.quantize import quantize_with_gate

    fp32, int8 = stage / FP32_NAME, stage / INT8_NAME
    on_message(f"quantizing: {quant.method} calibration on {len(calibration)} images, {quant.format} "
               f"{'U8S8' if quant.activation_type == 'uint8' else 'S8S8'}, "
               f"{'per-channel' if quant.per_channel else 'per-tensor'} "
               f"{'7-bit ' if quant.reduce_range else ''}weights; gate {quant.max_drop:g} pp on "
               f"{len(evaluation)} eval images")
    if reduce_range_reason:
        on_message(f"7-bit weights (--reduce-range): {reduce_range_reason}; --no-reduce-range overrides")
    started = time.perf_counter()
    result: QuantizationResult = quantize_with_gate(fp32, int8, quant, calibration, evaluation, fp32_logits,
                                                    input_name, on_message)
    timings["quantize_s"] = time.perf_counter() - started
    assert evaluation.labels is not None and result.int8_logits is not None
    write_evalset(stage / EVALSET_NAME, evaluation.images, evaluation.labels, fp32_logits.argmax(axis=1),
                  result.int8_logits.argmax(axis=1))
    started = time.perf_counter()
    latency = quick_latency({"fp32": fp32, "int8": int8}, evaluation.images)
    timings["latency_s"] = time.perf_counter() - started
    files = {name: file_record(stage / name) for name in (FP32_NAME, INT8_NAME, EVALSET_NAME)}
    fp32_accuracy = accuracy_from_logits(fp32_logits, evaluation.labels)
    int8_accuracy = accuracy_from_logits(result.int8_logits, evaluation.labels)
    c, h, w = evaluation.image_shape
    return {
        "schema": MANIFEST_SCHEMA, "artifact_id": plan.artifact_id, "model": plan.model, "created": utc_now(),
        **record,
        "inputs": {**record.get("inputs", {}), "calibration": calibration.record, "evalset": evaluation.record},
        "versions": _versions(),
        "input": {"name": input_name, "shape": [None, c, h, w]}, "output": {"name": output_name},
        "files": files,
        "sizes": {"fp32_bytes": files[FP32_NAME]["bytes"], "int8_bytes": files[INT8_NAME]["bytes"],
                  "int8_over_fp32": files[INT8_NAME]["bytes"] / files[FP32_NAME]["bytes"]},
        "accuracy": {"fp32": fp32_accuracy.to_dict(), "int8": int8_accuracy.to_dict(), "drop_pp": result.drop_pp,
                     "max_drop_pp": quant.max_drop, "evalset": "evalset.npz (disjoint from the calibration set)"},
        "nodes": {**record.get("nodes", {}), "int8": count_nodes(int8)},
        "kept_float": result.kept_float,
        "quantization": {**result.to_dict(), "reduce_range_reason": reduce_range_reason},
        "latency": latency,
        "timings": timings,
        "hash_inputs": plan.inputs,
    }


def _publish(store: ArtifactStore, stage: Path, plan: _Plan, manifest: dict[str, Any], timings: dict[str, float],
             started: float) -> PipelineResult:
    timings["total_s"] = time.perf_counter() - started
    atomic_write_json(stage / MANIFEST_NAME, manifest)  # last: a folder with a manifest is complete
    folder = store.publish(stage, plan.model, plan.artifact_id)
    return PipelineResult(folder, manifest, cached=False, seconds=timings["total_s"])


def run_export(request: ExportRequest, on_message: Messages = _silent,
               on_train_progress: TrainProgressCallback | None = None) -> PipelineResult:
    """Checkpoint -> FP32 ONNX (parity-checked) -> simplified -> INT8 behind the gate -> artifact folder."""
    started = time.perf_counter()
    request.export.validate()
    request.quant.validate()
    request, reduce_range_reason = with_resolved_quant(request)
    _check_eval_count(request.eval_count)
    store = ArtifactStore(request.artifacts)
    store.check_writable()
    cached = cached_export(request)
    if cached is not None:
        return cached
    import torch

    from toolchain.checkpoints import load_checkpoint
    from toolchain.calibration import check_disjoint, check_image_shape
    from toolchain.evaluate import onnx_logits, torch_array_logits
    from toolchain.export import INPUT_NAME, OUTPUT_NAME, check_parity, export_onnx, parity_tolerance
    from toolchain.simplify import simplify_onnx

    timings: dict[str, float] = {}
    checkpoint = request.checkpoint or _find_or_train_checkpoint(request, on_message, on_train_progress)
    step = time.perf_counter()
    loaded = load_checkpoint(checkpoint, request.model)
    info = loaded.info
    sidecar = info.to_dict() if info is not None else None
    plan = _plan_export(request, loaded.spec.name, loaded.sha256, sidecar)
    found = _cached(store, plan, started)
    if found is not None:
        return found
    on_message(f"checkpoint {checkpoint} (sha256 {loaded.sha256[:12]}), artifact id {plan.artifact_id}")
    dataset = plan.inputs["dataset"]
    data_dir = request.data_dir or (info.training.get("data_dir") if info is not None else None)
    mean, std = (info.mean, info.std) if info is not None else (None, None)
    calibration = _load_image_set(plan.calibration, "calibration set", mean, std, data_dir)
    evaluation = _load_image_set(plan.evaluation, "eval set", mean, std, data_dir)
    expected = (info.in_channels, info.input_size, info.input_size) if info is not None else evaluation.image_shape
    check_image_shape(evaluation, expected, "eval set")
    check_image_shape(calibration, expected, "calibration set")
    check_disjoint(calibration, evaluation)
    timings["checkpoint_and_data_s"] = time.perf_counter() - step
    class_names = list(info.class_names) if info is not None else evaluation.record.get("class_names", [])
    resolved_mean, resolved_std = evaluation.record["resolved_mean"], evaluation.record["resolved_std"]
    metadata = {"model": plan.model, "dataset": dataset, "class_names": json.dumps(class_names),
                "mean": json.dumps(resolved_mean), "std": json.dumps(resolved_std),
                "checkpoint_sha256": loaded.sha256, "version": __version__, "input_layout": "NCHW"}
    settings = request.export
    with tempfile.TemporaryDirectory(prefix="toolchain-export-") as scratch, store.staging() as stage:
        raw, fp32 = Path(scratch) / "exported.onnx", stage / FP32_NAME
        step = time.perf_counter()
        exported = export_onnx(loaded.model, torch.from_numpy(evaluation.images[:1]), raw, settings.opset,
                               {METADATA_PREFIX + key: value for key, value in metadata.items()}, settings.exporter)
        reference = torch_array_logits(loaded.model, evaluation.images)
        logits = onnx_logits(raw, evaluation.images)
        parity = {"atol": settings.atol, "rtol": settings.rtol, "images": len(evaluation),
                  "tolerance": parity_tolerance(reference, settings.atol, settings.rtol),
                  "export_max_abs": check_parity(reference, logits, settings.atol, settings.rtol,
                                                 "ONNX export vs torch")}
        timings["export_s"] = time.perf_counter() - step
        nodes = {"exported": exported.nodes}
        on_message(f"exported ({exported.exporter}, opset {exported.opset}, {exported.nodes} nodes): "
                   f"max |d| vs torch {parity['export_max_abs']:.2g} on {len(evaluation)} eval images")
        if settings.simplify:
            step = time.perf_counter()
            simplified = simplify_onnx(raw, fp32)
            logits = onnx_logits(fp32, evaluation.images)
            parity["simplify_max_abs"] = check_parity(reference, logits, settings.atol, settings.rtol,
                                                     "simplified ONNX vs torch")
            nodes["simplified"] = simplified.nodes_after
            nodes["batchnorm_folded"] = simplified.batchnorm_folded
            timings["simplify_s"] = time.perf_counter() - step
            on_message(f"simplified (onnxsim {simplified.onnxsim_version}): {simplified.nodes_before} -> "
                       f"{simplified.nodes_after} nodes{_folded_note(simplified.batchnorm_folded)}, "
                       f"max |d| vs torch {parity['simplify_max_abs']:.2g}")
        else:
            shutil.copyfile(raw, fp32)
        record = {"opset": exported.opset, "dataset": {"name": dataset, "class_names": class_names,
                                                         "mean": resolved_mean, "std": resolved_std},
                  "inputs": {"checkpoint": {"file": str(checkpoint), "sha256": loaded.sha256,
                                            "bytes": checkpoint.stat().st_size,
                                            "trained": {key: sidecar.get(key) for key in ("dataset", "epoch", "metrics")}
                                            if sidecar else None}},
                  "settings": {"export": settings.to_dict(), "quantization": request.quant.to_dict()},
                  "parity": parity, "nodes": nodes}
        manifest = _finish_artifact(stage, plan, calibration, evaluation, logits, request.quant, INPUT_NAME,
                                    OUTPUT_NAME, record, timings, on_message, reduce_range_reason)
        return _publish(store, stage, plan, manifest, timings, started)


def _folded_note(count: int) -> str:
    return f" ({count} BatchNorm after ReLU folded away)" if count else ""


def artifact_name(text: str) -> str:
    """A folder-safe model name for `toolchain quantize` (lower case, [a-z0-9._-])."""
    name = _NAME_RE.sub("-", text.lower()).strip("-.")
    if not name:
        raise UsageError(f"cannot make an artifact name from {text!r}", "pass --name NAME")
    return name


def run_quantize(request: QuantizeRequest, on_message: Messages = _silent) -> PipelineResult:
    """Any NCHW ONNX image classifier -> simplified FP32 (parity-checked) -> INT8 behind the gate -> artifact."""
    started = time.perf_counter()
    ExportSettings(atol=request.atol, rtol=request.rtol).validate()
    request.quant.validate()
    request, reduce_range_reason = with_resolved_quant(request)
    _check_eval_count(request.eval_count)
    store = ArtifactStore(request.artifacts)
    store.check_writable()
    from toolchain.calibration import check_disjoint, check_image_shape
    from toolchain.evaluate import onnx_logits
    from toolchain.export import check_parity, parity_tolerance
    from toolchain.onnx_model import add_metadata, count_nodes, inspect_classifier
    from toolchain.simplify import simplify_onnx

    timings: dict[str, float] = {}
    source = request.onnx.expanduser()
    classifier = inspect_classifier(source)
    metadata = classifier.metadata
    dataset = metadata.get(METADATA_PREFIX + "dataset")
    calibration_spec, calibration_record = _image_set_spec(resolve_calibration_arg(request.calibration, dataset))
    if request.eval_set:
        evaluation_spec, evaluation_record = _image_set_spec(request.eval_set)
    elif isinstance(calibration_spec, ImageSetDefinition):
        evaluation_spec = calibration_spec.eval_counterpart(request.eval_count)
        evaluation_record = evaluation_spec.content()
    else:
        raise UsageError("a calibration set given as an array file needs --eval-set",
                         "pass --eval-set with a labeled .npz (images, labels) or a definition name")
    source_sha256 = sha256_file(source)
    name = artifact_name(request.name or source.stem)
    inputs = {"kind": "quantize", "model": name, "source_sha256": source_sha256, "atol": request.atol, "rtol": request.rtol,
              "simplify": request.simplify, "quantization": request.quant.to_dict(),
              "calibration": calibration_record, "evalset": evaluation_record,
              "data_dir": str(request.data_dir) if request.data_dir else None, "toolchain": __version__,
              "graph_passes": list(SIMPLIFY_PASSES) if request.simplify else (),
              "quantize_passes": list(QUANTIZE_PASSES), "stack": stack_versions()}
    plan = _Plan(name, inputs, calibration_spec, evaluation_spec)
    found = _cached(store, plan, started)
    if found is not None:
        return found
    on_message(f"{source.name}: input {classifier.input_name} {[None, *classifier.input_shape]}, "
               f"opset {classifier.opset}; artifact id {plan.artifact_id}")
    step = time.perf_counter()
    mean = json.loads(metadata[METADATA_PREFIX + "mean"]) if METADATA_PREFIX + "mean" in metadata else None
    std = json.loads(metadata[METADATA_PREFIX + "std"]) if METADATA_PREFIX + "std" in metadata else None
    calibration = _load_image_set(calibration_spec, "calibration set", mean, std, request.data_dir)
    evaluation = _load_image_set(evaluation_spec, "eval set", mean, std, request.data_dir)
    if evaluation.labels is None:
        raise CalibrationError("the eval set has no labels", "pass an .npz with images and labels as --eval-set")
    check_image_shape(calibration, classifier.input_shape, "calibration set")
    check_image_shape(evaluation, classifier.input_shape, "eval set")
    check_disjoint(calibration, evaluation)
    timings["data_s"] = time.perf_counter() - step
    with store.staging() as stage:
        fp32 = stage / FP32_NAME
        step = time.perf_counter()
        reference = onnx_logits(source, evaluation.images)
        parity: dict[str, Any] = {"atol": request.atol, "rtol": request.rtol, "images": len(evaluation),
                                  "tolerance": parity_tolerance(reference, request.atol, request.rtol)}
        nodes = {"source": count_nodes(source)}
        if request.simplify:
            simplified = simplify_onnx(source, fp32)
            parity["simplify_max_abs"] = check_parity(reference, onnx_logits(fp32, evaluation.images),
                                                      request.atol, request.rtol,
                                                      "simplified ONNX vs the original")
            nodes["simplified"] = simplified.nodes_after
            nodes["batchnorm_folded"] = simplified.batchnorm_folded
            on_message(f"simplified: {simplified.nodes_before} -> {simplified.nodes_after} nodes"
                       f"{_folded_note(simplified.batchnorm_folded)}, max |d| {parity['simplify_max_abs']:.2g}")
        else:
            shutil.copyfile(source, fp32)
        add_metadata(fp32, {METADATA_PREFIX + "source_sha256": source_sha256,
                            METADATA_PREFIX + "source_file": source.name, METADATA_PREFIX + "version": __version__})
        logits = onnx_logits(fp32, evaluation.images)
        timings["simplify_s"] = time.perf_counter() - step
        record = {"opset": classifier.opset,
                  "dataset": {"name": evaluation.record.get("dataset"),
                              "class_names": evaluation.record.get("class_names"),
                              "mean": evaluation.record.get("resolved_mean"),
                              "std": evaluation.record.get("resolved_std")},
                  "inputs": {"source_onnx": {"file": str(source), "sha256": source_sha256,
                                             "bytes": source.stat().st_size}},
                  "settings": {"export": {"atol": request.atol, "rtol": request.rtol, "simplify": request.simplify},
                               "quantization": request.quant.to_dict()},
                  "parity": parity, "nodes": nodes}
        manifest = _finish_artifact(stage, plan, calibration, evaluation, logits, request.quant,
                                    classifier.input_name, classifier.output_name, record, timings, on_message,
                                    reduce_range_reason)
        return _publish(store, stage, plan, manifest, timings, started)
