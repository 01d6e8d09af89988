"""Where a run starts: a torch checkpoint (`toolchain export`) or a foreign ONNX file (`toolchain quantize`).

A source says what identifies it (hashed into the plan) without loading anything heavy; the network
or the ONNX graph is loaded only when a pass asks for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain import __version__
from toolchain.hashing import sha256_file

if TYPE_CHECKING:
    from torch import nn

    from toolchain.graph.model import ClassifierIO
    from toolchain.pipeline.context import PassContext
    from toolchain.training.checkpoints import LoadedCheckpoint

METADATA_PREFIX = "toolchain."


def read_sidecar(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's JSON sidecar as plain data (no torch), or None."""
    try:
        data = json.loads(checkpoint.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class CheckpointSource:
    """A state_dict checkpoint and its sidecar; ``model`` is the registry's name for the network."""

    path: Path
    model: str
    sha256: str
    sidecar: dict[str, Any] | None = None
    _loaded: "LoadedCheckpoint | None" = field(default=None, repr=False)

    @classmethod
    def open(cls, path: Path, requested_model: str) -> "CheckpointSource":
        """Identify a checkpoint; torch is imported only when its sidecar names the model otherwise."""
        sidecar = read_sidecar(path)
        if sidecar is not None and sidecar.get("model") == requested_model:
            return cls(path, requested_model, sha256_file(path), sidecar)
        from toolchain.training.checkpoints import load_checkpoint

        loaded = load_checkpoint(path, requested_model)
        info = loaded.info
        return cls(path, loaded.spec.name, loaded.sha256, info.to_dict() if info is not None else None, loaded)

    @property
    def loaded(self) -> "LoadedCheckpoint":
        if self._loaded is None:
            from toolchain.training.checkpoints import load_checkpoint

            self._loaded = load_checkpoint(self.path, self.model, sha256=self.sha256)
        return self._loaded

    @property
    def network(self) -> "nn.Module":
        return self.loaded.model

    def identity(self) -> dict[str, Any]:
        sidecar = self.sidecar or {}
        return {"checkpoint_sha256": self.sha256,
                "normalization": {"mean": sidecar.get("mean"), "std": sidecar.get("std")} if self.sidecar else None}

    def record(self) -> dict[str, Any]:
        """What the manifest says of it."""
        sidecar = self.sidecar
        qat = ((sidecar or {}).get("training") or {}).get("qat")
        return {"checkpoint": {"file": str(self.path), "sha256": self.sha256, "bytes": self.path.stat().st_size,
                               "trained": {key: sidecar.get(key) for key in ("dataset", "epoch", "metrics")}
                               if sidecar else None, **({"qat": qat} if qat else {})}}

    def metadata(self, context: "PassContext") -> dict[str, str]:
        """The exported model's metadata_props: what it is, trained on what, fed how."""
        record = context.evaluation.record
        class_names = (self.sidecar or {}).get("class_names") or record.get("class_names", [])
        values = {"model": self.model, "dataset": context.facts["dataset"]["name"],
                  "class_names": json.dumps(list(class_names)), "mean": json.dumps(record["resolved_mean"]),
                  "std": json.dumps(record["resolved_std"]), "checkpoint_sha256": self.sha256, "version": __version__,
                  "input_layout": "NCHW"}
        return {METADATA_PREFIX + key: value for key, value in values.items()}


@dataclass
class OnnxSource:
    """A foreign ONNX image classifier, checked to be one."""

    path: Path
    sha256: str

    @cached_property
    def classifier(self) -> "ClassifierIO":
        from toolchain.graph.model import inspect_classifier

        return inspect_classifier(self.path)

    def metadata_value(self, key: str) -> Any:
        """A toolchain.* metadata entry of the model, JSON-decoded, or None."""
        text = self.classifier.metadata.get(METADATA_PREFIX + key)
        return json.loads(text) if text is not None and key in ("mean", "std") else text

    def record(self) -> dict[str, Any]:
        return {"source_onnx": {"file": str(self.path), "sha256": self.sha256, "bytes": self.path.stat().st_size}}

    def metadata(self) -> dict[str, str]:
        return {METADATA_PREFIX + "source_sha256": self.sha256, METADATA_PREFIX + "source_file": self.path.name,
                METADATA_PREFIX + "version": __version__}
