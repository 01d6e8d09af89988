"""`toolchain export` (zoo model -> verified FP32 + INT8 ONNX artifact) and `toolchain quantize` (any ONNX).

Nothing heavy is imported at module level; a cached export with --checkpoint imports neither torch
nor onnx, so it answers in well under a second.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from toolchain.cli.options import (DEFAULT_ARTIFACTS, ArtifactsOption, CheckpointOption, DataDirOption, JsonOption,
                                   ModelOption, OptionalDatasetOption)
from toolchain.cli.output import emit_json, info, progress, table
from toolchain.pipeline.config import DEFAULT_ATOL, DEFAULT_MAX_DROP, DEFAULT_OPSET, DEFAULT_RTOL, ExportSettings, QatSettings, QuantSettings

if TYPE_CHECKING:
    from toolchain.pipeline import ExportRequest, PipelineResult
    from toolchain.training.loop import TrainProgress

CalibrationOption = Annotated[Optional[str], typer.Option(
    "--calibration", help="Calibration set: a name under calibration/ (default: the dataset's), a .toml "
    "definition, or a .npy/.npz of preprocessed float32 NCHW images.")]
MethodOption = Annotated[str, typer.Option(
    "--method", help="Calibration: auto (default: minmax, then percentile, then entropy, then percentile 99.99 and 99.9 "
    "until INT8 meets the gate, then the same with the activation channels equalized), "
    "or pin one of minmax, entropy, percentile.")]
FormatOption = Annotated[Optional[str], typer.Option(
    "--format", help="qoperator (QLinearConv...; default: fastest measured here) or qdq (Q/DQ pairs). "
    "Unset, --method auto also tries qdq when no calibration passes.")]
PerChannelOption = Annotated[Optional[bool], typer.Option(
    "--per-channel/--per-tensor", help="Weight scales per channel (default). Unset, --method auto also tries "
    "per-tensor when no calibration passes.")]
ActivationTypeOption = Annotated[str, typer.Option(
    "--activation-type", help="uint8 (U8S8, default: fast on x86) or int8 (S8S8).")]
ReduceRangeOption = Annotated[bool | None, typer.Option(
    "--reduce-range/--no-reduce-range",
    help="7-bit weights (default: on only for U8S8 on an x86 host without VNNI, whose kernels saturate).")]
ExcludeNodesOption = Annotated[Optional[str], typer.Option(
    "--exclude-nodes", help="Comma-separated node names to keep in float (names of the FP32 model).")]
MaxDropOption = Annotated[float, typer.Option(
    "--max-drop", help="Accuracy gate: largest INT8 top-1 drop vs FP32 in percentage points.")]
MaxKeptFloatOption = Annotated[Optional[int], typer.Option(
    "--max-kept-float", help="Most nodes the gate may keep in float (default: half of the quantizable ones).")]
EvalCountOption = Annotated[int, typer.Option("--eval-count", help="Eval images (shipped in evalset.npz).", min=1)]
AtolOption = Annotated[float, typer.Option("--atol", help="Parity tolerance: max |d| of logits vs the reference.")]
RtolOption = Annotated[float, typer.Option(
    "--rtol", help="Relative part of the parity tolerance, times each eval image's largest |logit|, plus 8x the "
    "network's own float32 rounding (0: absolute only, no rounding allowance).")]
SimplifyOption = Annotated[bool, typer.Option(
    "--simplify/--no-simplify", help="Run onnxsim, then fold or rescale the BatchNorms after ReLUs (default on).")]


def _quant_options(
    method: MethodOption = "auto",
    quant_format: FormatOption = None,
    per_channel: PerChannelOption = None,
    activation_type: ActivationTypeOption = "uint8",
    reduce_range: ReduceRangeOption = None,
    exclude_nodes: ExcludeNodesOption = None,
    max_drop: MaxDropOption = DEFAULT_MAX_DROP,
    max_kept_float: MaxKeptFloatOption = None,
) -> QuantSettings:
    """The quantization options `export` and `quantize` share, as the settings they describe."""
    excluded = tuple(name.strip() for name in (exclude_nodes or "").split(",") if name.strip())
    return QuantSettings(method=method, format=quant_format or "qoperator",
                         per_channel=True if per_channel is None else per_channel,
                         layout_pinned=quant_format is not None or per_channel is not None,
                         activation_type=activation_type,
                         reduce_range=reduce_range, exclude_nodes=excluded, max_drop=max_drop,
                         max_kept_float=max_kept_float)


def with_quant_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the options of `_quant_options` in place of its ``quant`` parameter (one list, two commands).

    Typer reads the wrapper's signature; the wrapper gathers those options into the `QuantSettings`
    that ``command`` receives as ``quant``.
    """
    shared = list(inspect.signature(_quant_options, eval_str=True).parameters.values())
    own = list(inspect.signature(command, eval_str=True).parameters.values())
    at = [parameter.name for parameter in own].index("quant")

    @functools.wraps(command)
    def wrapper(**values: Any) -> None:
        quant = _quant_options(**{parameter.name: values.pop(parameter.name) for parameter in shared})
        command(**values, quant=quant)

    wrapper.__signature__ = inspect.Signature(own[:at] + shared + own[at + 1:])  # type: ignore[attr-defined]
    return wrapper


def show_result(result: "PipelineResult", json_output: bool) -> None:
    """The FP32 vs INT8 table (or the manifest as JSON) of a made or cached artifact."""
    from toolchain.report import artifact_notes, artifact_table

    if json_output:
        emit_json({**result.manifest.to_json(), "folder": str(result.folder), "cached": result.cached,
                   "seconds": result.seconds})
        return
    summary = artifact_table(result.manifest)
    table(summary.title, summary.columns, summary.rows, right_align=summary.right_align)
    for line in artifact_notes(result.manifest):
        info(line)
    if result.cached:
        info(f"cached: inputs unchanged since {result.manifest.created}, no work done "
             f"({result.seconds:.2f} s)")
    else:
        info(f"made in {result.seconds:.1f} s")
    info(f"artifact: {result.folder}")


@with_quant_options
def export(
    model: ModelOption,
    checkpoint: CheckpointOption = None,
    dataset: OptionalDatasetOption = None,
    data_dir: DataDirOption = None,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset to write (7-18).")] = DEFAULT_OPSET,
    exporter: Annotated[str, typer.Option(
        "--exporter", help="torchscript (fast, default) or dynamo (torch.export based).")] = "torchscript",
    atol: AtolOption = DEFAULT_ATOL,
    rtol: RtolOption = DEFAULT_RTOL,
    simplify: SimplifyOption = True,
    calibration: CalibrationOption = None,
    quant: QuantSettings = QuantSettings(),
    eval_count: EvalCountOption = 500,
    qat: Annotated[Optional[bool], typer.Option(
        "--qat/--no-qat", help="Quantization-aware fine-tuning (torch.ao fake quantization) of the checkpoint: "
        "default: only when post-training INT8 misses the gate; --qat: always first; --no-qat: never.")] = None,
    qat_epochs: Annotated[int, typer.Option("--qat-epochs", help="QAT epochs at most.", min=1)] = QatSettings.epochs,
    qat_images: Annotated[int, typer.Option(
        "--qat-images", help="Training images per QAT epoch (a seeded sample).", min=1)] = QatSettings.images,
    qat_minutes: Annotated[float, typer.Option(
        "--qat-minutes", help="QAT time budget: no epoch starts after it.")] = QatSettings.minutes,
    train: Annotated[bool, typer.Option(
        "--train/--no-train", help="Without a checkpoint given or found, train one briefly (default on).")] = True,
    json_output: JsonOption = False,
) -> None:
    """Checkpoint -> verified FP32 and INT8 ONNX (+ eval set, manifest) in artifacts/<model>/<id>/."""
    from toolchain.pipeline import ExportRequest

    request = ExportRequest(
        model=model, checkpoint=checkpoint, dataset=dataset, data_dir=data_dir, artifacts=artifacts,
        export=ExportSettings(opset=opset, exporter=exporter, atol=atol, rtol=rtol, simplify=simplify),
        quant=quant,
        calibration=calibration, eval_count=eval_count, train_if_missing=train,
        qat="auto" if qat is None else ("on" if qat else "off"),
        qat_settings=QatSettings(epochs=qat_epochs, images=qat_images, minutes=qat_minutes))
    show_result(export_with_progress(request), json_output)


def export_with_progress(request: "ExportRequest") -> "PipelineResult":
    """Run the host pipeline with a live progress line (brief training included) and its messages on stderr."""
    from toolchain.pipeline import run_export

    with progress() as bar:
        task = bar.add_task("export", total=None, status="")

        def on_train(event: "TrainProgress") -> None:
            if event.phase == "train":
                bar.update(task, description=f"training epoch {event.epoch}/{event.epochs}", total=event.batches,
                           completed=event.batch, status=f"loss {event.loss:.3f} acc {event.accuracy:.1f}%")
            elif event.phase == "eval":
                bar.update(task, status="evaluating")

        def on_message(message: str) -> None:
            bar.update(task, description=message[:60], total=None, status="")
            info(message)

        return run_export(request, on_message=on_message, on_train_progress=on_train)


@with_quant_options
def quantize(
    onnx_file: Annotated[Path, typer.Option("--onnx", help="An ONNX image classifier (float32 NCHW input).")],
    name: Annotated[Optional[str], typer.Option(
        "--name", help="Artifact folder name (default: the file's stem).")] = None,
    calibration: CalibrationOption = None,
    eval_set: Annotated[Optional[str], typer.Option(
        "--eval-set", help="Labeled eval set: a definition name/.toml (default: the calibration set's test "
        "split) or an .npz with images and labels.")] = None,
    data_dir: DataDirOption = None,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    atol: AtolOption = DEFAULT_ATOL,
    rtol: RtolOption = DEFAULT_RTOL,
    simplify: SimplifyOption = True,
    quant: QuantSettings = QuantSettings(),
    eval_count: EvalCountOption = 500,
    json_output: JsonOption = False,
) -> None:
    """Simplify, quantize to INT8 behind the accuracy gate and store any NCHW ONNX image classifier."""
    from toolchain.pipeline import QuantizeRequest, run_quantize

    request = QuantizeRequest(
        onnx=onnx_file, name=name, calibration=calibration, eval_set=eval_set, data_dir=data_dir,
        artifacts=artifacts, atol=atol, rtol=rtol, simplify=simplify,
        quant=quant,
        eval_count=eval_count)
    with progress() as bar:
        task = bar.add_task("quantize", total=None, status="")

        def on_message(message: str) -> None:
            bar.update(task, description=message[:60])
            info(message)

        result = run_quantize(request, on_message=on_message)
    show_result(result, json_output)


def register(app: typer.Typer) -> None:
    """Add `export` and `quantize` to the toolchain app."""
    app.command("export")(export)
    app.command("quantize")(quantize)
