"""The manifest of an artifact: what made it and how good it is, as one typed, versioned record.

Written as ``manifest.json`` (schema ``toolchain.manifest/1``) by the pipeline's package pass and read
back by one loader (`Manifest.from_json`, `read_manifest`) for the store, deploy, bench and the reports.
Sections that several passes fill (``parity``, ``nodes``, ``quantization``, ``latency``) stay open
mappings; everything a consumer relies on is a typed field checked on load. Fields added later are
optional, so manifests written before them (no ``lineage``, no ``optimize``) still load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from toolchain.errors import ArtifactError

MANIFEST_SCHEMA = "toolchain.manifest/1"
KNOWN_SCHEMAS = (MANIFEST_SCHEMA,)
MANIFEST_NAME = "manifest.json"
FP32_NAME = "model.fp32.onnx"
INT8_NAME = "model.int8.onnx"
EVALSET_NAME = "evalset.npz"
ARTIFACT_FILES = (FP32_NAME, INT8_NAME, EVALSET_NAME)


@dataclass(frozen=True)
class FileRecord:
    """sha256 and size of one file of the artifact."""

    sha256: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class DatasetInfo:
    """The data the model was judged on: name, class names, the normalisation it is fed with."""

    name: str | None
    class_names: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "class_names": self.class_names, "mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class VariantAccuracy:
    """Top-1 (and top-5) of one variant on the eval set."""

    top1: float
    count: int
    top5: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"top1": self.top1, "count": self.count, "top5": self.top5}


@dataclass(frozen=True)
class AccuracyRecord:
    """FP32 and INT8 on the same eval images, and the gate they were held to."""

    fp32: VariantAccuracy
    int8: VariantAccuracy
    drop_pp: float
    max_drop_pp: float
    evalset: str = "evalset.npz (disjoint from the calibration set)"
    # per variant: eval images (index as text) whose top logits tie exactly on the host -> the tied classes;
    # INT8 logits are quantized, so ties happen, and a target may break one the other way
    ties: Mapping[str, Mapping[str, list[int]]] = field(default_factory=dict)
    # a QAT fine-tune's drop is measured from the FP32 top-1 of the checkpoint it started from (not its own)
    baseline_top1: float | None = None

    def to_json(self) -> dict[str, Any]:
        document = {"fp32": self.fp32.to_json(), "int8": self.int8.to_json(), "drop_pp": self.drop_pp,
                    "max_drop_pp": self.max_drop_pp, "evalset": self.evalset}
        if self.baseline_top1 is not None:
            document["baseline_top1"] = self.baseline_top1
        return {**document, "ties": dict(self.ties)} if self.ties else document

    def variant(self, name: str) -> VariantAccuracy | None:
        return {"fp32": self.fp32, "int8": self.int8}.get(name)


@dataclass(frozen=True)
class Manifest:
    """One artifact: identity, lineage, inputs, settings, files, and its measured quality."""

    artifact_id: str
    model: str
    created: str
    opset: int
    dataset: DatasetInfo
    input_name: str
    input_shape: list[int | None]
    output_name: str
    files: Mapping[str, FileRecord]
    accuracy: AccuracyRecord
    kept_float: list[str]
    inputs: Mapping[str, Any]
    settings: Mapping[str, Any]
    hash_inputs: Mapping[str, Any]
    parity: Mapping[str, Any] = field(default_factory=dict)
    nodes: Mapping[str, Any] = field(default_factory=dict)
    quantization: Mapping[str, Any] = field(default_factory=dict)
    latency: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    lineage: list[Mapping[str, Any]] = field(default_factory=list)
    # `toolchain optimize`: the target this artifact was chosen for, every candidate measured there, why it won
    optimize: Mapping[str, Any] = field(default_factory=dict)
    schema: str = MANIFEST_SCHEMA

    @property
    def kind(self) -> str:
        """"export" (a zoo model from a checkpoint) or "quantize" (a foreign ONNX file)."""
        return str(self.hash_inputs.get("kind", "export"))

    @property
    def exporter(self) -> str | None:
        return self.settings.get("export", {}).get("exporter")

    def sizes(self) -> dict[str, Any]:
        fp32, int8 = self.files[FP32_NAME].bytes, self.files[INT8_NAME].bytes
        return {"fp32_bytes": fp32, "int8_bytes": int8, "int8_over_fp32": int8 / fp32}

    def to_json(self) -> dict[str, Any]:
        """The manifest.json document."""
        return {
            "schema": self.schema, "artifact_id": self.artifact_id, "model": self.model, "created": self.created,
            "opset": self.opset, "dataset": self.dataset.to_json(), "inputs": dict(self.inputs),
            "settings": dict(self.settings), "parity": dict(self.parity), "nodes": dict(self.nodes),
            "versions": dict(self.versions), "input": {"name": self.input_name, "shape": list(self.input_shape)},
            "output": {"name": self.output_name}, "files": {name: record.to_json() for name, record in self.files.items()},
            "sizes": self.sizes(), "accuracy": self.accuracy.to_json(), "kept_float": list(self.kept_float),
            "quantization": dict(self.quantization), "latency": dict(self.latency), "timings": dict(self.timings),
            "hash_inputs": dict(self.hash_inputs), "lineage": [dict(entry) for entry in self.lineage],
            **({"optimize": dict(self.optimize)} if self.optimize else {}),
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "manifest") -> "Manifest":
        """A manifest from its JSON document, checked field by field (ArtifactError naming ``source``)."""
        check = _Checker(source)
        if not isinstance(data, dict) or data.get("schema") not in KNOWN_SCHEMAS:
            raise ArtifactError(f"{source} is not a {MANIFEST_SCHEMA} manifest",
                                "delete the folder and rerun the export with this version of toolchain")
        files = check.mapping(data, "files")
        accuracy = check.mapping(data, "accuracy")
        return cls(
            schema=data["schema"], artifact_id=check.text(data, "artifact_id"), model=check.text(data, "model"),
            created=str(data.get("created", "")), opset=check.integer(data, "opset"),
            dataset=DatasetInfo(**{key: data.get("dataset", {}).get(key) for key in ("name", "class_names", "mean",
                                                                                       "std")}),
            input_name=check.text(check.mapping(data, "input"), "name", "input.name"),
            input_shape=list(check.mapping(data, "input").get("shape") or []),
            output_name=check.text(check.mapping(data, "output"), "name", "output.name"),
            files={name: FileRecord(check.text(record, "sha256", f"files.{name}.sha256"),
                                    check.integer(record, "bytes", f"files.{name}.bytes"))
                   for name, record in files.items() if isinstance(record, dict)},
            accuracy=AccuracyRecord(fp32=check.accuracy(accuracy, "fp32"), int8=check.accuracy(accuracy, "int8"),
                                    drop_pp=check.number(accuracy, "drop_pp", "accuracy.drop_pp"),
                                    max_drop_pp=check.number(accuracy, "max_drop_pp", "accuracy.max_drop_pp"),
                                    evalset=str(accuracy.get("evalset", "")), ties=check.ties(accuracy),
                                    baseline_top1=(check.number(accuracy, "baseline_top1", "accuracy.baseline_top1")
                                                   if "baseline_top1" in accuracy else None)),
            kept_float=[str(name) for name in data.get("kept_float") or []],
            inputs=check.mapping(data, "inputs"), settings=check.mapping(data, "settings"),
            hash_inputs=check.mapping(data, "hash_inputs"), parity=data.get("parity") or {},
            nodes=data.get("nodes") or {}, quantization=data.get("quantization") or {},
            latency=data.get("latency") or {}, timings=data.get("timings") or {}, versions=data.get("versions") or {},
            lineage=list(data.get("lineage") or []), optimize=check.optional_mapping(data, "optimize"))


class _Checker:
    """Typed reads of a manifest document; the first wrong field is an ArtifactError naming it."""

    def __init__(self, source: str) -> None:
        self.source = source

    def _fail(self, key: str, expected: str) -> ArtifactError:
        return ArtifactError(f"{self.source}: {key} is missing or not {expected}",
                             "the manifest was edited or written by another tool: delete the folder and rerun the export")

    def mapping(self, data: Mapping[str, Any], key: str, where: str | None = None) -> dict[str, Any]:
        value = data.get(key)
        if not isinstance(value, dict):
            raise self._fail(where or key, "an object")
        return value

    def optional_mapping(self, data: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._fail(key, "an object")
        return value

    def text(self, data: Mapping[str, Any], key: str, where: str | None = None) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise self._fail(where or key, "a string")
        return value

    def integer(self, data: Mapping[str, Any], key: str, where: str | None = None) -> int:
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(where or key, "an integer")
        return value

    def number(self, data: Mapping[str, Any], key: str, where: str | None = None) -> float:
        value = data.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self._fail(where or key, "a number")
        return float(value)

    def ties(self, accuracy: Mapping[str, Any]) -> dict[str, dict[str, list[int]]]:
        ties = accuracy.get("ties", {})
        valid = isinstance(ties, dict) and all(
            isinstance(images, dict) and all(isinstance(classes, list) and all(isinstance(c, int) for c in classes)
                                             for classes in images.values()) for images in ties.values())
        if not valid:
            raise self._fail("accuracy.ties", "a mapping of variant -> image -> classes")
        return {variant: {str(image): list(classes) for image, classes in images.items()}
                for variant, images in ties.items()}

    def accuracy(self, data: Mapping[str, Any], variant: str) -> VariantAccuracy:
        record = self.mapping(data, variant, f"accuracy.{variant}")
        return VariantAccuracy(self.number(record, "top1", f"accuracy.{variant}.top1"),
                               self.integer(record, "count", f"accuracy.{variant}.count"), record.get("top5"))


def read_manifest(folder: Path) -> Manifest:
    """The manifest of an artifact folder, checked (one reader for every consumer)."""
    path = folder / MANIFEST_NAME
    try:
        document = json.loads(path.read_text())
    except OSError:
        raise ArtifactError(f"{folder} is not an artifact folder (no {MANIFEST_NAME})",
                            "pass a folder made by `toolchain export` or `toolchain quantize`") from None
    except ValueError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}", "delete the folder and rerun the export") from None
    return Manifest.from_json(document, str(path))
