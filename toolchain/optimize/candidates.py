"""The models `toolchain optimize` measures on a target: FP32, the INT8 flavours, mixed-precision variants.

Every INT8 candidate is made on the host by the pipeline's own quantize and gate passes
(`toolchain.pipeline.quantize_with_gate`) from the artifact's FP32 file, its calibration set and its eval set,
with the calibration method the artifact's gate chose: a candidate that misses the accuracy gate on the host
(after keeping what nodes in float the gate may) is not measured on the target, and the log says why.

- flavours: QOperator and QDQ x U8S8 (uint8 activations) and S8S8 (int8 activations), per-channel int8
  weights; the artifact's own INT8 file stands for its flavour (not made again);
- mixed: a flavour with the nodes kept in float whose INT8 is slower *on the target* by its per-node profile,
  where each such node pays for the conversions it adds (toolchain.optimize.mixed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from toolchain.artifacts import EVALSET_NAME, FP32_NAME, INT8_NAME, Artifact, read_evalset
from toolchain.errors import AccuracyGateError, CalibrationError, QuantizationError
from toolchain.hashing import sha256_file
from toolchain.pipeline.config import QuantSettings

# (format, activation type): the flavours measured, the project's default first
FLAVOURS = (("qoperator", "uint8"), ("qoperator", "int8"), ("qdq", "uint8"), ("qdq", "int8"))
FP32, INT8, MIXED = "fp32", "int8", "mixed"

Messages = Callable[[str], None]


def flavour_name(quant_format: str, activation_type: str) -> str:
    return f"{quant_format}-{'u8s8' if activation_type == 'uint8' else 's8s8'}"


@dataclass
class Candidate:
    """One model measured on the target (or the reason it was not)."""

    name: str
    kind: str  # fp32, int8 or mixed
    path: Path | None = None
    settings: dict[str, Any] | None = None  # the QuantSettings it was made with (INT8 and mixed)
    kept_float: tuple[str, ...] = ()  # nodes the accuracy gate kept in float
    kept_for_latency: tuple[str, ...] = ()  # nodes kept in float because INT8 was slower there on the target
    host: dict[str, Any] = field(default_factory=dict)  # the host gate's FP32/INT8 top-1 and drop
    gate: dict[str, Any] = field(default_factory=dict)  # the gate pass's notes (the manifest's quantization section)
    failure: str | None = None  # why it was not measured on the target
    reused: bool = False  # the artifact's own INT8 file
    sha256: str = ""

    @property
    def flavour(self) -> str | None:
        if not self.settings:
            return None
        return flavour_name(self.settings["format"], self.settings["activation_type"])

    @property
    def file_name(self) -> str:
        return f"{self.name}.onnx"

    def log(self) -> dict[str, Any]:
        """The decision log's record of what the candidate is."""
        settings = self.settings or {}
        return {"candidate": self.name, "kind": self.kind, "flavour": self.flavour,
                "format": settings.get("format"), "activation_type": settings.get("activation_type"),
                "per_channel": settings.get("per_channel"), "reduce_range": settings.get("reduce_range"),
                "method": settings.get("method"), "kept_float": list(self.kept_float),
                "kept_for_latency": list(self.kept_for_latency), "host": dict(self.host),
                "reused_artifact_int8": self.reused, "sha256": self.sha256, "failure": self.failure}


@dataclass(frozen=True)
class QuantizationInputs:
    """What every INT8 candidate is made from: the artifact's FP32 file, calibration and eval images, settings."""

    fp32: Path
    input_name: str
    calibration: Any  # ImageSet
    evaluation: Any  # ImageSet
    base: QuantSettings
    max_drop: float


def base_settings(artifact: Artifact, max_drop: float | None) -> QuantSettings:
    """The artifact's quantization settings with the calibration method its gate chose (no search again)."""
    recorded = dict(artifact.manifest.settings.get("quantization") or {})
    known = {item.name for item in dataclasses.fields(QuantSettings)}
    values = {key: value for key, value in recorded.items() if key in known}
    values["exclude_nodes"] = tuple(values.get("exclude_nodes") or ())
    for key in ("method", "format", "per_channel"):  # what the artifact's gate chose
        if key in artifact.manifest.quantization:
            values[key] = artifact.manifest.quantization[key]
    values["max_drop"] = artifact.manifest.accuracy.max_drop_pp if max_drop is None else max_drop
    settings = QuantSettings(**values)
    settings.validate()
    return settings


def quantization_inputs(artifact: Artifact, max_drop: float | None = None, calibration: str | None = None,
                        data_dir: Path | None = None) -> QuantizationInputs:
    """The artifact's calibration set (drawn again from its definition, or `calibration`) and its eval set."""
    from toolchain.data.imagesets import ImageSet, load_array_file, load_definition, load_image_set
    from toolchain.data.imagesets import ImageSetDefinition

    manifest = artifact.manifest
    arrays = read_evalset(artifact.directory / EVALSET_NAME)
    evaluation = ImageSet(arrays["images"], arrays["labels"], dict(manifest.inputs.get("evalset") or {}))
    record = dict(manifest.inputs.get("calibration") or {})
    if calibration is not None:
        path = Path(calibration).expanduser()
        images = (load_array_file(path, "calibration set") if path.suffix in (".npy", ".npz") else
                  load_image_set(load_definition(calibration), record.get("resolved_mean"),
                                 record.get("resolved_std"), data_dir))
    elif record.get("kind") == "definition":
        fields = {item.name for item in dataclasses.fields(ImageSetDefinition)} - {"source", "description"}
        values = {key: record.get(key) for key in fields if key in record}
        for key in ("mean", "std"):
            values[key] = tuple(values[key]) if values.get(key) is not None else None
        images = load_image_set(ImageSetDefinition(**values), record.get("resolved_mean"), record.get("resolved_std"),
                                data_dir or record.get("data_source"))
    else:
        raise CalibrationError(f"artifact {artifact.artifact_id} was calibrated on an array file "
                               f"({record.get('file', 'unknown')}), which the store does not keep",
                               "pass it again: toolchain optimize ... --calibration FILE.npz")
    settings = base_settings(artifact, max_drop)
    return QuantizationInputs(artifact.directory / FP32_NAME, manifest.input_name, images, evaluation, settings,
                              settings.max_drop)


def flavour_settings(base: QuantSettings, quant_format: str, activation_type: str,
                     exclude: tuple[str, ...] = ()) -> QuantSettings:
    """A flavour of the artifact's settings: per-channel weights, 7-bit only where the host needs it (resolved)."""
    return dataclasses.replace(base, format=quant_format, activation_type=activation_type, per_channel=True,
                               layout_pinned=True, reduce_range=None,
                               exclude_nodes=tuple(dict.fromkeys((*base.exclude_nodes, *exclude))))


def _same_flavour(recorded: dict[str, Any], settings: QuantSettings) -> bool:
    resolved = settings.resolved()[0]
    return all(recorded.get(key) == getattr(resolved, key)
               for key in ("format", "activation_type", "per_channel", "reduce_range"))


def artifact_candidate(artifact: Artifact) -> Candidate:
    """The artifact's own INT8 file, as the candidate of its flavour."""
    manifest = artifact.manifest
    settings = dict(manifest.settings.get("quantization") or {})
    # what the gate shipped: --method auto may have chosen the calibration, and the other format or weights
    for key in ("method", "format", "per_channel"):
        if key in manifest.quantization:
            settings[key] = manifest.quantization[key]
    path = artifact.directory / INT8_NAME
    name = f"{INT8}-{flavour_name(settings['format'], settings['activation_type'])}"
    return Candidate(name, INT8, path, settings, tuple(manifest.kept_float), (),
                     {"fp32_top1": manifest.accuracy.fp32.top1, "int8_top1": manifest.accuracy.int8.top1,
                      "drop_pp": manifest.accuracy.drop_pp}, dict(manifest.quantization), None, True,
                     sha256_file(path))


def build_int8(inputs: QuantizationInputs, name: str, kind: str, settings: QuantSettings, folder: Path,
               kept_for_latency: tuple[str, ...] = (), on_message: Messages = lambda _: None) -> Candidate:
    """One INT8 candidate made by the quantize and gate passes; a miss of the host gate is recorded, not raised."""
    from toolchain.pipeline import quantize_with_gate

    resolved = settings.resolved()[0]
    candidate = Candidate(name, kind, settings=resolved.to_dict(), kept_for_latency=kept_for_latency)
    output = folder / candidate.file_name
    try:
        outcome = quantize_with_gate(inputs.fp32, output, settings, inputs.calibration, inputs.evaluation,
                                     inputs.input_name, on_message=on_message)
    except (AccuracyGateError, QuantizationError) as error:
        candidate.failure = f"not made: {error.message}"
        return candidate
    candidate.path = output
    candidate.sha256 = sha256_file(output)
    candidate.kept_float = tuple(name for name in outcome.kept_float if name not in kept_for_latency)
    candidate.host = {"fp32_top1": outcome.fp32_top1, "int8_top1": outcome.int8_top1, "drop_pp": outcome.drop_pp}
    candidate.gate = dict(outcome.notes)
    return candidate


def flavour_candidates(artifact: Artifact, inputs: QuantizationInputs, folder: Path,
                       flavours: tuple[tuple[str, str], ...] = FLAVOURS,
                       on_message: Messages = lambda _: None) -> list[Candidate]:
    """The artifact's INT8 file for its own flavour, and one candidate made for each other flavour."""
    own = artifact_candidate(artifact)
    found = []
    for quant_format, activation_type in flavours:
        settings = flavour_settings(inputs.base, quant_format, activation_type)
        if _same_flavour(own.settings or {}, settings):
            found.append(own)
            continue
        name = f"{INT8}-{flavour_name(quant_format, activation_type)}"
        on_message(f"making {name} on the host (quantize + accuracy gate)")
        found.append(build_int8(inputs, name, INT8, settings, folder))
    return found
