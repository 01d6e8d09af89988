"""`toolchain export` and `toolchain quantize`: two lists of passes over one runner.

    export:    export -> simplify -> batchnorm -> quantize -> gate -> package   (from a torch checkpoint)
    quantize:  import-onnx -> simplify -> batchnorm -> quantize -> gate -> package   (any NCHW classifier)

Both first compute the artifact id from their inputs (source hash, data definitions, every pass's name,
version and config, stack versions); an existing folder with that id is returned as it is (no work).
With an explicit checkpoint, or the newest one trained under its registry name, that cached path imports
neither torch nor onnx. The library never prints: messages go to ``on_message``, training progress to
``on_train_progress``.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from toolchain import __version__
from toolchain.artifacts import ArtifactStore, artifact_id
from toolchain.data.imagesets import (DEFAULT_EVAL_COUNT, ImageSetDefinition, array_file_record, is_array_file,
                                      load_definition, resolve_calibration_arg)
from toolchain.errors import AccuracyGateError, CalibrationError, CheckpointError, ParityError, UsageError
from toolchain.manifest import Manifest, read_manifest
from toolchain.pipeline.config import ExportSettings, QatSettings, QuantSettings
from toolchain.pipeline.context import ImageSetSpec, Messages, PassContext, silent
from toolchain.pipeline.passes import ModelRecord, Pass, create_pass
from toolchain.pipeline.runner import PassCache, Runner, default_pass_cache
from toolchain.pipeline.sources import METADATA_PREFIX, CheckpointSource, OnnxSource, read_sidecar

if TYPE_CHECKING:
    import numpy as np

    from toolchain.data.imagesets import ImageSet
    from toolchain.quantization.gate import GateOutcome

    from toolchain.training.loop import TrainProgress

DEFAULT_DATASET = "fashion-mnist"
# No checkpoint given or found: two short epochs (30-40 s on 2 cores; hps-06-0.5x reaches ~81 % on
# Fashion-MNIST). One epoch is not enough: without an lr decay the BatchNorm running statistics lag the
# still-moving weights and eval-mode accuracy sits near 43 % (measured), which no quantizer can keep.
# One core is left free: torch's intra-op threads on every core of a busy 2-core machine made this
# training 10x slower (467 s vs 40 s with one thread, measured beside another CPU-bound job).
QUICK_TRAIN = {"epochs": 2, "train_limit": 10_000, "eval_limit": 1_000, "batch_size": 32, "lr": 0.05,
               "augment": False, "threads": max(1, (os.cpu_count() or 1) - 1)}
# A deep HPS in the papers' unit order (conv -> ReLU -> BN, at least DEEP_HPS_BLOCKS blocks) trains at a fifth of
# that lr. Measured on hps-21-1x-v3 (2 epochs, 1,000 test images): at lr 0.05 BN channels that never fired in
# training fire at eval time and compound over the 21 blocks (test loss 3e7, logits to 4e8; 76.0 % top-1), and
# no INT8 calibration keeps it above 27 %; at 0.02 the test loss is still 1.8e3 and INT8 stays at chance; at
# 0.01 the eval-mode network is sane (test loss 0.87, 69.5 %) and ships INT8 within the 1-point gate.
DEEP_HPS_BLOCKS = 12
DEEP_HPS_QUICK_LR = 0.01
EXPORT_PASSES = ("export", "simplify", "batchnorm", "quantize", "gate", "package")
QUANTIZE_PASSES = ("import-onnx", "simplify", "batchnorm", "quantize", "gate", "package")
# what --no-simplify leaves out
GRAPH_PASSES = ("simplify", "batchnorm")
_NAME_RE = re.compile(r"[^a-z0-9._-]+")
_STACK = ("torch", "onnx", "onnxruntime", "onnxsim", "numpy")
QAT_MODES = ("auto", "on", "off")
# `quantize_with_gate`'s parity for a rewrite inside the gate: relative to each image's largest logit (no float64
# run there to estimate the file's own rounding)
BARE_ONNX_RTOL = 1e-4

TrainProgressCallback = Callable[["TrainProgress"], None]


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
    passes: tuple[str, ...] | None = None  # default: EXPORT_PASSES (less GRAPH_PASSES with --no-simplify)
    # auto: fine-tune with QAT when post-training INT8 misses the gate; on: always first; off: never
    qat: str = "auto"
    qat_settings: QatSettings = field(default_factory=QatSettings)


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
    passes: tuple[str, ...] | None = None  # default: QUANTIZE_PASSES (less GRAPH_PASSES with --no-simplify)


@dataclass
class PipelineResult:
    """An artifact folder, its manifest, and whether it was made by this run."""

    folder: Path
    manifest: Manifest
    cached: bool
    seconds: float


@dataclass
class Plan:
    """What decides an artifact: the passes, the hashed inputs, the image sets, the facts for the manifest."""

    model: str
    base: dict[str, Any]
    passes: list[Pass]
    calibration: ImageSetDefinition | Path
    evaluation: ImageSetDefinition | Path
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def hash_inputs(self) -> dict[str, Any]:
        return {**self.base, **self.facts.get("settings_hashed", {}),
                "passes": [item.identity() for item in self.passes]}

    @property
    def artifact_id(self) -> str:
        return artifact_id(self.hash_inputs)


Request = TypeVar("Request", ExportRequest, QuantizeRequest)


def with_resolved_quant(request: Request) -> tuple[Request, str | None]:
    """The request with its quantization settings decided for this host (see QuantSettings.resolved)."""
    quant, reason = request.quant.resolved()
    return replace(request, quant=quant), reason


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


def _runtime_versions() -> dict[str, str]:
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


def _pass_list(names: Sequence[str], simplify: bool, quant: QuantSettings, export: ExportSettings | None) -> list[Pass]:
    """The passes of a run: the registered pass of each name with the request's config for it."""
    from toolchain.passes.export import ExportConfig

    configs: dict[str, Any] = {"quantize": quant, "gate": quant}
    if export is not None:
        configs["export"] = ExportConfig(opset=export.opset, exporter=export.exporter)
    return [create_pass(name, configs.get(name)) for name in names if simplify or name not in GRAPH_PASSES]


def _base(kind: str, model: str, identity: dict[str, Any], dataset: str | None, data_dir: Path | None,
          atol: float, rtol: float, calibration: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    """The inputs every pass's cache key starts from (the source, the data, the parity tolerance, the stack)."""
    return {"kind": kind, "model": model, **identity, "dataset": dataset,
            "data_dir": str(data_dir) if data_dir else None, "parity": {"atol": atol, "rtol": rtol},
            "calibration": calibration, "evalset": evaluation, "toolchain": __version__, "stack": stack_versions()}


def _plan_export(request: ExportRequest, source: CheckpointSource, reduce_range_reason: str | None) -> Plan:
    """The plan of an export: the same for the cached path (sidecar JSON) and the full one."""
    sidecar = source.sidecar
    dataset = sidecar.get("dataset") if sidecar else (request.dataset or DEFAULT_DATASET)
    if sidecar and request.dataset and request.dataset != dataset:
        raise UsageError(f"the checkpoint was trained on {dataset}, not {request.dataset}",
                         f"drop --dataset, or pass a checkpoint trained on {request.dataset}")
    calibration, calibration_record = _image_set_spec(resolve_calibration_arg(request.calibration, dataset))
    if isinstance(calibration, ImageSetDefinition) and calibration.preprocessing != "normalize":
        raise CalibrationError(f"calibration set {calibration.name} uses preprocessing "
                               f"{calibration.preprocessing!r}, but zoo models are fed normalised images",
                               "use preprocessing = \"normalize\" (mean/std come from the checkpoint)")
    evaluation = ImageSetDefinition(name=f"{dataset}-test", dataset=dataset, split="test", count=request.eval_count,
                                    description="eval set: random test images")
    settings = request.export
    base = _base("export", source.model, source.identity(), dataset, request.data_dir, settings.atol, settings.rtol,
                 calibration_record, evaluation.content())
    passes = _pass_list(request.passes or EXPORT_PASSES, settings.simplify, request.quant, settings)
    facts = {"dataset": {"name": dataset, "class_names": (sidecar or {}).get("class_names")},
             "inputs": source.record(), "reduce_range_reason": reduce_range_reason,
             "settings": {"export": settings.to_dict(), "quantization": request.quant.to_dict()},
             "settings_hashed": {"export": settings.to_dict(), "quantization": request.quant.to_dict()}}
    return Plan(source.model, base, passes, calibration, evaluation, facts)


def _cached(store: ArtifactStore, plan: Plan, started: float) -> PipelineResult | None:
    folder = store.find(plan.model, plan.artifact_id)
    if folder is None:
        return None
    return PipelineResult(folder, read_manifest(folder), cached=True, seconds=time.perf_counter() - started)


def _newest_checkpoint(request: ExportRequest) -> Path | None:
    from toolchain.training.checkpoints import find_latest_checkpoint

    return find_latest_checkpoint(request.artifacts, request.model, request.dataset or DEFAULT_DATASET)


def _newest_note(request: ExportRequest, found: Path, sidecar: dict[str, Any] | None) -> str:
    epoch, epochs = (sidecar or {}).get("epoch", 0), (sidecar or {}).get("epochs", 0)
    unfinished = f" (epoch {epoch} of {epochs}: that run stopped early)" if epoch < epochs else ""
    return (f"checkpoint: the newest trained {(sidecar or {}).get('model', request.model)} on "
            f"{request.dataset or DEFAULT_DATASET}: {found}{unfinished}")


def cached_export(request: ExportRequest, on_message: Messages = silent) -> PipelineResult | None:
    """The artifact of an export, if it exists, decided without torch or onnx.

    With no --checkpoint the newest one trained under the model's registry name is used; a model spelled
    another way, or a checkpoint whose sidecar names it otherwise, is left to the full path (None).
    """
    started = time.perf_counter()
    request, reason = with_resolved_quant(request)
    checkpoint = request.checkpoint or _newest_checkpoint(request)
    if checkpoint is None or not checkpoint.is_file():
        return None
    sidecar = read_sidecar(checkpoint)
    if not sidecar or sidecar.get("model") != request.model:
        return None
    plan = _plan_export(request, CheckpointSource.open(checkpoint, request.model), reason)
    found = _cached(ArtifactStore(request.artifacts), plan, started)
    if found is not None and request.checkpoint is None:
        on_message(_newest_note(request, checkpoint, sidecar))
    return found


def quick_train_budget(model: str) -> dict[str, Any]:
    """The quick budget `export` trains ``model`` with when it has no checkpoint: QUICK_TRAIN, at
    DEEP_HPS_QUICK_LR for a deep HPS with BN after its ReLUs (see there)."""
    from toolchain.models import resolve

    spec = resolve(model)
    deep = spec.family == "hps" and not spec.bn_first and sum(spec.depth or ()) >= DEEP_HPS_BLOCKS
    return {**QUICK_TRAIN, "lr": DEEP_HPS_QUICK_LR} if deep else dict(QUICK_TRAIN)


def _find_or_train_checkpoint(request: ExportRequest, on_message: Messages,
                              on_train_progress: TrainProgressCallback | None) -> Path:
    from toolchain.models import resolve

    name = resolve(request.model).name
    dataset = request.dataset or DEFAULT_DATASET
    found = _newest_checkpoint(request)
    if found is not None:
        on_message(_newest_note(request, found, read_sidecar(found)))
        return found
    if not request.train_if_missing:
        raise CheckpointError(f"no trained checkpoint of {name} on {dataset} under {request.artifacts}",
                              f"pass --checkpoint PATH, or train one: toolchain train --model {name}")
    from toolchain.training.loop import TrainConfig, train_model

    budget = quick_train_budget(name)
    deep = f", lr {budget['lr']:g} for a deep HPS" if budget["lr"] != QUICK_TRAIN["lr"] else ""
    on_message(f"no trained checkpoint of {name} on {dataset} under {request.artifacts}: training one now with a "
               f"short budget ({budget['epochs']} epochs on {budget['train_limit']:,} images{deep}); for a real "
               f"model run `toolchain train --model {name}` first")
    config = TrainConfig(model=name, dataset=dataset, data_dir=request.data_dir, artifacts=request.artifacts,
                         **budget)
    result = train_model(config, on_progress=on_train_progress)
    top1 = result.info.metrics.get('test_top1', float('nan'))
    on_message(f"trained: test top-1 {top1:.2f}% -> {result.checkpoint}")
    warning = near_chance_warning(top1, result.info.num_classes, name)
    if warning:
        on_message(warning)
    return result.checkpoint


def near_chance_warning(top1: float, classes: int, model: str) -> str | None:
    """What to say when a briefly trained checkpoint is barely better than guessing (None when it is not)."""
    chance = 100.0 / max(classes, 1)
    if not top1 < max(2.0 * chance, chance + 5.0):  # 10 classes: below 20 %; 100 classes: below 6 %
        return None
    return (f"warning: the brief training left {model} at {top1:.1f}% top-1, near chance ({chance:.0f}%): its INT8 "
            f"gate compares two poor models; train it properly first (toolchain train --model {model})")


def _check_export_data(context: PassContext) -> None:
    from toolchain.data.imagesets import check_disjoint, check_image_shape

    sidecar = context.source.sidecar
    evaluation, calibration = context.evaluation, context.calibration
    expected = ((sidecar["in_channels"], sidecar["input_size"], sidecar["input_size"])
                if sidecar else evaluation.image_shape)
    check_image_shape(evaluation, expected, "eval set")
    check_image_shape(calibration, expected, "calibration set")
    check_disjoint(calibration, evaluation)


def _torch_reference(context: PassContext) -> "np.ndarray":
    from toolchain.evaluators.reference import torch_array_logits

    return torch_array_logits(context.source.network, context.evaluation.images)


def _torch_rounding(context: PassContext) -> "np.ndarray":
    from toolchain.evaluators.reference import float32_rounding

    return float32_rounding(context.source.network, context.evaluation.images, context.reference)


def _execute(plan: Plan, store: ArtifactStore, context_arguments: dict[str, Any], started: float) -> PipelineResult:
    """Run a plan's passes into a staging folder of the store and publish it as the artifact."""
    # the C extensions load before anything is written: a Ctrl-C while onnx's initialises can kill the process
    # (SIGSEGV or SIGABRT, measured; docs/reliability.md), and then no staging folder is left behind
    versions = _runtime_versions()
    with tempfile.TemporaryDirectory(prefix="toolchain-run-") as scratch, store.staging() as stage:
        context = PassContext(model=plan.model, artifact_id=plan.artifact_id, scratch=Path(scratch),
                              facts={**plan.facts, "hash_inputs": plan.hash_inputs}, **context_arguments)
        context.facts["versions"] = versions
        Runner(PassCache(default_pass_cache()), context).run(plan.passes, plan.base, stage)
        folder = store.publish(stage, plan.model, plan.artifact_id)
    return PipelineResult(folder, context.manifest, cached=False, seconds=time.perf_counter() - started)


def run_export(request: ExportRequest, on_message: Messages = silent,
               on_train_progress: TrainProgressCallback | None = None) -> PipelineResult:
    """Checkpoint -> FP32 ONNX (parity-checked) -> simplified -> INT8 behind the gate -> artifact folder.

    With ``qat`` "auto", an INT8 model that misses the gate after every post-training attempt sends the
    checkpoint through quantization-aware fine-tuning (`toolchain.training.qat`) and the export runs again
    on the fine-tuned checkpoint; "on" fine-tunes first, "off" never.
    """
    if request.qat not in QAT_MODES:
        raise UsageError(f"unknown QAT mode {request.qat!r}", "use --qat, --no-qat or neither (auto)")
    request.qat_settings.validate()
    if request.qat == "on":
        return _export_after_qat(request, None, on_message, on_train_progress)
    try:
        return _export_once(request, on_message, on_train_progress)
    except AccuracyGateError as failure:
        if request.qat != "auto":
            raise
        return _export_after_qat(request, failure, on_message, on_train_progress)


def _export_after_qat(request: ExportRequest, failure: AccuracyGateError | None, on_message: Messages,
                      on_train_progress: TrainProgressCallback | None) -> PipelineResult:
    """Fine-tune the request's checkpoint with fake quantization (or reuse that fine-tune), then export it."""
    from toolchain.errors import DatasetError, TrainingError
    from toolchain.models import resolve
    from toolchain.training.qat import fine_tune, qat_checkpoint_path

    checkpoint = request.checkpoint or _find_or_train_checkpoint(request, on_message, on_train_progress)
    quant = request.quant.resolved()[0]
    bits = 7 if quant.reduce_range else 8
    # the export's own calibration set: the fine-tune measures its activation ranges there and freezes them
    source = CheckpointSource.open(checkpoint, request.model)
    plan = _plan_export(request, source, None)
    sidecar = source.sidecar or {}
    calibration = ImageSetSpec(plan.calibration, "calibration set", sidecar.get("mean"), sidecar.get("std"),
                               request.data_dir or sidecar.get("training", {}).get("data_dir"))
    target = qat_checkpoint_path(request.artifacts, resolve(request.model).name, source.sha256,
                                 request.qat_settings, bits, quant.activation_type, quant.per_channel,
                                 plan.base["calibration"])
    why = failure.message if failure is not None else "--qat"
    on_message((f"post-training INT8 misses the gate ({why}); " if failure is not None else "") +
               f"quantization-aware fine-tuning of {checkpoint.name}: up to {request.qat_settings.epochs} epoch(s) on "
               f"{request.qat_settings.images:,} images, {request.qat_settings.minutes:g} min at most (--no-qat refuses)")
    try:
        tuned = fine_tune(checkpoint, target, request.qat_settings, bits, quant.activation_type,
                          lambda: calibration.load().images, request.data_dir, on_train_progress, reason=why,
                          per_channel=quant.per_channel)
    except (DatasetError, CalibrationError, TrainingError) as exc:
        if failure is None:
            raise
        raise AccuracyGateError(failure.message, f"{failure.hint}; quantization-aware fine-tuning was not possible: "
                                f"{exc.message}") from None
    on_message(("reusing the fine-tuned checkpoint " if tuned.reused else "fine-tuned: ") + str(tuned.checkpoint))
    try:
        return _export_once(replace(request, checkpoint=tuned.checkpoint, qat="off"), on_message, on_train_progress)
    except (AccuracyGateError, ParityError) as after:
        if not tuned.reused:  # a failed run leaves the store as it was: the fine-tune did not help
            _remove_qat_checkpoint(request.artifacts, tuned.checkpoint)
        epochs = f"{tuned.record.get('epochs_run', '?')} epoch(s)"
        if isinstance(after, ParityError):  # the fine-tune's own FP32 export is unusable: say what failed first
            removed = "" if tuned.reused else " (removed)"
            measured = f"; post-training INT8 failed first: {failure.message}" if failure is not None else ""
            raise ParityError(f"quantization-aware fine-tuning ({epochs}) of {checkpoint} gave a checkpoint"
                              f"{removed} whose FP32 fails parity: {after.message}{measured}",
                              "the fine-tune broke the float network: " +
                              (f"pass --no-qat and {failure.hint}" if failure is not None else
                               "export without --qat")) from None
        raise AccuracyGateError(f"{after.message}, after quantization-aware fine-tuning ({epochs})",
                                f"{after.hint}, or more QAT (--qat-epochs, --qat-images)") from None
    except BaseException:  # any other failure or Ctrl-C in the export: the store is left as it was, too
        if not tuned.reused:
            _remove_qat_checkpoint(request.artifacts, tuned.checkpoint)
        raise


def _remove_qat_checkpoint(artifacts: Path, checkpoint: Path) -> None:
    """Delete a fine-tuned checkpoint's folder and the folders above it that it leaves empty (up to the store)."""
    import shutil

    shutil.rmtree(checkpoint.parent, ignore_errors=True)
    folder = checkpoint.parent.parent
    while folder != artifacts and folder.is_relative_to(artifacts):
        try:
            folder.rmdir()
        except OSError:
            break
        folder = folder.parent


def _export_once(request: ExportRequest, on_message: Messages,
                 on_train_progress: TrainProgressCallback | None) -> PipelineResult:
    started = time.perf_counter()
    request.export.validate()
    request.quant.validate()
    _check_eval_count(request.eval_count)
    store = ArtifactStore(request.artifacts)
    store.check_writable()
    found = cached_export(request, on_message)
    if found is not None:
        return found
    request, reason = with_resolved_quant(request)
    checkpoint = request.checkpoint or _find_or_train_checkpoint(request, on_message, on_train_progress)
    source = CheckpointSource.open(checkpoint, request.model)
    plan = _plan_export(request, source, reason)
    found = _cached(store, plan, started)
    if found is not None:
        return found
    _announce(plan, reason, on_message, f"checkpoint {checkpoint} (sha256 {source.sha256[:12]})")
    sidecar = source.sidecar or {}
    data_dir = request.data_dir or sidecar.get("training", {}).get("data_dir")
    mean, std = sidecar.get("mean"), sidecar.get("std")
    return _execute(plan, store, dict(
        calibration=ImageSetSpec(plan.calibration, "calibration set", mean, std, data_dir),
        evaluation=ImageSetSpec(plan.evaluation, "eval set", mean, std, data_dir),
        reference=_torch_reference, rounding=_torch_rounding, check_data=_check_export_data, atol=request.export.atol,
        rtol=request.export.rtol, source=source, on_message=on_message), started)


def _announce(plan: Plan, reason: str | None, on_message: Messages, what: str) -> None:
    on_message(f"{what}, artifact id {plan.artifact_id}; passes: {' -> '.join(item.name for item in plan.passes)}")
    if reason:
        on_message(f"7-bit weights (--reduce-range): {reason}; --no-reduce-range overrides")


def artifact_name(text: str) -> str:
    """A folder-safe model name for `toolchain quantize` (lower case, [a-z0-9._-])."""
    name = _NAME_RE.sub("-", text.lower()).strip("-.")
    if not name:
        raise UsageError(f"cannot make an artifact name from {text!r}", "pass --name NAME")
    return name


def _plan_quantize(request: QuantizeRequest, source: OnnxSource, reduce_range_reason: str | None) -> Plan:
    dataset = source.metadata_value("dataset")
    calibration, calibration_record = _image_set_spec(resolve_calibration_arg(request.calibration, dataset))
    if request.eval_set:
        evaluation, evaluation_record = _image_set_spec(request.eval_set)
    elif isinstance(calibration, ImageSetDefinition):
        evaluation = calibration.eval_counterpart(request.eval_count)
        evaluation_record = evaluation.content()
    else:
        raise UsageError("a calibration set given as an array file needs --eval-set",
                         "pass --eval-set with a labeled .npz (images, labels) or a definition name")
    name = artifact_name(request.name or source.path.stem)
    base = _base("quantize", name, {"source_sha256": source.sha256}, dataset, request.data_dir, request.atol,
                 request.rtol, calibration_record, evaluation_record)
    passes = _pass_list(request.passes or QUANTIZE_PASSES, request.simplify, request.quant, None)
    export = {"atol": request.atol, "rtol": request.rtol, "simplify": request.simplify}
    facts = {"dataset": {"name": None, "class_names": None}, "inputs": source.record(),
             "reduce_range_reason": reduce_range_reason,
             "settings": {"export": export, "quantization": request.quant.to_dict()},
             "settings_hashed": {"quantization": request.quant.to_dict()}}
    return Plan(name, base, passes, calibration, evaluation, facts)


def _check_quantize_data(context: PassContext) -> None:
    from toolchain.data.imagesets import check_disjoint, check_image_shape

    shape = context.source.classifier.input_shape
    if context.evaluation.labels is None:
        raise CalibrationError("the eval set has no labels", "pass an .npz with images and labels as --eval-set")
    check_image_shape(context.calibration, shape, "calibration set")
    check_image_shape(context.evaluation, shape, "eval set")
    check_disjoint(context.calibration, context.evaluation)


def _onnx_reference(context: PassContext) -> "np.ndarray":
    from toolchain.evaluators.accuracy import onnx_logits

    return onnx_logits(context.source.path, context.evaluation.images)


def run_quantize(request: QuantizeRequest, on_message: Messages = silent) -> PipelineResult:
    """Any NCHW ONNX image classifier -> simplified FP32 (parity-checked) -> INT8 behind the gate -> artifact."""
    from toolchain.hashing import sha256_file

    started = time.perf_counter()
    ExportSettings(atol=request.atol, rtol=request.rtol).validate()
    request.quant.validate()
    request, reason = with_resolved_quant(request)
    _check_eval_count(request.eval_count)
    store = ArtifactStore(request.artifacts)
    store.check_writable()
    path = request.onnx.expanduser()
    source = OnnxSource(path, "")
    classifier = source.classifier  # checks the file before anything is hashed or planned
    source.sha256 = sha256_file(path)
    plan = _plan_quantize(request, source, reason)
    found = _cached(store, plan, started)
    if found is not None:
        return found
    _announce(plan, reason, on_message, f"{path.name}: input {classifier.input_name} "
                                        f"{[None, *classifier.input_shape]}, opset {classifier.opset}")
    mean, std = source.metadata_value("mean"), source.metadata_value("std")
    return _execute(plan, store, dict(
        calibration=ImageSetSpec(plan.calibration, "calibration set", mean, std, request.data_dir),
        evaluation=ImageSetSpec(plan.evaluation, "eval set", mean, std, request.data_dir),
        reference=_onnx_reference, check_data=_check_quantize_data, atol=request.atol, rtol=request.rtol,
        source=source, on_message=on_message), started)


def quantize_with_gate(fp32_model: Path, output: Path, settings: QuantSettings, calibration: "ImageSet",
                       evaluation: "ImageSet", input_name: str, on_message: Messages = silent) -> "GateOutcome":
    """The quantize and gate passes over one ONNX file, outside any artifact (no cache): INT8 into ``output``."""
    import shutil

    from toolchain.evaluators.accuracy import onnx_logits
    from toolchain.quantization.gate import GateOutcome

    settings.validate()
    settings = settings.resolved()[0]
    with tempfile.TemporaryDirectory(prefix="toolchain-quantize-") as scratch_name:
        scratch = Path(scratch_name)
        # a rewrite inside the gate (activation equalization) is checked against the file itself
        context = PassContext(model=fp32_model.stem, artifact_id="", scratch=scratch, on_message=on_message,
                              calibration=ImageSetSpec(calibration, "calibration set"),
                              evaluation=ImageSetSpec(evaluation, "eval set"),
                              reference=lambda context: onnx_logits(fp32_model, context.evaluation.images),
                              check_data=lambda _: None, atol=0.0, rtol=BARE_ONNX_RTOL)
        record = ModelRecord(fp32=fp32_model, input_name=input_name, output_name="", opset=0)
        for index, name in enumerate(("quantize", "gate")):
            folder = scratch / f"{index}-{name}"
            folder.mkdir()
            record = create_pass(name, settings).run(record, context, folder)
        assert record.int8 is not None
        shutil.move(str(record.int8), str(output))
    return GateOutcome.from_notes(output, record.note("quantization"))


__all__ = ["DEFAULT_DATASET", "EXPORT_PASSES", "ExportRequest", "METADATA_PREFIX", "PipelineResult", "QUANTIZE_PASSES",
           "QUICK_TRAIN", "QuantizeRequest", "quick_train_budget", "artifact_name", "cached_export", "run_export", "run_quantize",
           "quantize_with_gate", "stack_versions", "with_resolved_quant"]
