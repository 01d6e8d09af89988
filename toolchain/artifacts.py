"""The artifact store: content-addressed folders ``artifacts/<model>/<id>/`` with a manifest.

    model.fp32.onnx   the verified FP32 model (weights embedded)
    model.int8.onnx   the static INT8 model that passed the accuracy gate (weights embedded)
    evalset.npz       labeled eval images, normalised exactly as the host fed the models, with the
                      host's argmax answers of both models (pred_fp32, pred_int8)
    manifest.json     what made it (inputs with sha256, settings, versions) and how good it is
    bench/            benchmark results, <target>-<UTC time>.json

The id is the first 16 hex digits of the sha256 of the canonical JSON of every input (model,
checkpoint sha256, dataset, export and quantization settings, calibration and eval-set definitions,
toolchain version): the same inputs find the same folder and no work is done. A folder is built in
a staging directory inside the store and renamed into place complete, manifest last; a failed run
leaves nothing behind. No torch or onnx imports here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from toolchain.errors import ArtifactError
from toolchain.fsutil import ensure_writable_dir
from toolchain.hashing import sha256_file, sha256_json

MANIFEST_SCHEMA = "toolchain.manifest/1"
MANIFEST_NAME = "manifest.json"
FP32_NAME = "model.fp32.onnx"
INT8_NAME = "model.int8.onnx"
EVALSET_NAME = "evalset.npz"
BENCH_DIR = "bench"
ID_LENGTH = 16
ARTIFACT_FILES = (FP32_NAME, INT8_NAME, EVALSET_NAME)
_STAGING_PREFIX = ".staging-"


def artifact_id(inputs: dict[str, Any]) -> str:
    """First 16 hex digits of the sha256 of the inputs' canonical JSON."""
    return sha256_json(inputs)[:ID_LENGTH]


def file_record(path: Path) -> dict[str, Any]:
    """sha256 and size of a file, as the manifest lists it."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of an artifact folder, checked for our schema."""
    path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except OSError:
        raise ArtifactError(f"{folder} is not an artifact folder (no {MANIFEST_NAME})",
                            "pass a folder made by `toolchain export` or `toolchain quantize`") from None
    except ValueError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}", "delete the folder and rerun the export") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise ArtifactError(f"{path} is not a {MANIFEST_SCHEMA} manifest",
                            "delete the folder and rerun the export with this version of toolchain")
    return manifest


def write_evalset(path: Path, images: np.ndarray, labels: np.ndarray, pred_fp32: np.ndarray,
                  pred_int8: np.ndarray) -> None:
    """The labeled eval set shipped with an artifact (np.savez: plain arrays, no pickles)."""
    np.savez(path, images=np.ascontiguousarray(images, dtype=np.float32), labels=labels.astype(np.int64),
             pred_fp32=pred_fp32.astype(np.int64), pred_int8=pred_int8.astype(np.int64))


def read_evalset(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an artifact's evalset.npz."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not a readable eval set: {exc}", "delete the folder and rerun") from None


@dataclass(frozen=True)
class ArtifactStore:
    """Artifact folders under one root (``artifacts/`` by default)."""

    root: Path

    def folder(self, model: str, identifier: str) -> Path:
        return self.root / model / identifier

    def find(self, model: str, identifier: str) -> Path | None:
        """The complete folder for these inputs, if one was made before."""
        folder = self.folder(model, identifier)
        try:
            manifest = read_manifest(folder)
        except ArtifactError:
            return None
        files = manifest.get("files") or {}
        if manifest.get("artifact_id") != identifier or not set(ARTIFACT_FILES) <= set(files):
            return None
        intact = all((folder / name).is_file() and sha256_file(folder / name) == record.get("sha256")
                     for name, record in files.items())
        return folder if intact else None

    def latest(self, model: str) -> Path:
        """The newest complete artifact of a model (by the manifest's creation time)."""
        found = []
        for manifest_path in (self.root / model).glob(f"*/{MANIFEST_NAME}"):
            with contextlib.suppress(ArtifactError):
                manifest = read_manifest(manifest_path.parent)
                found.append((str(manifest.get("created", "")), manifest_path.parent.name, manifest_path.parent))
        if not found:
            raise ArtifactError(f"no artifact of {model} in {self.root}",
                                f"make one: toolchain export --model {model}")
        return max(found)[2]

    def check_writable(self) -> None:
        """Fail before any work if the store cannot be written (without creating anything)."""
        existing = self.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise ArtifactError(f"cannot write the artifact folder {self.root}: "
                                f"{existing} is {'not writable' if existing.is_dir() else 'not a folder'}",
                                "choose a folder you can write to (--artifacts)")

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder inside the store to build an artifact in; removed if the block fails."""
        existed = self.root.exists()
        ensure_writable_dir(self.root, "artifact folder")
        try:
            folder = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.root))
        except OSError as exc:
            raise ArtifactError(f"cannot write to the artifact folder {self.root}: {exc.strerror or exc}",
                                "choose a folder you can write to (--artifacts)") from None
        try:
            yield folder
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            if not existed:
                with contextlib.suppress(OSError):
                    self.root.rmdir()  # only if still empty: the store was created for this run
            raise

    def publish(self, staging: Path, model: str, identifier: str) -> Path:
        """Move a complete staging folder to its final name (a concurrent twin wins if it was first)."""
        final = self.folder(model, identifier)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists() and self.find(model, identifier) is None:
            shutil.rmtree(final)  # a damaged folder of the same inputs (a file edited or deleted): rebuilt
        try:
            os.rename(staging, final)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if self.find(model, identifier) is None:
                raise ArtifactError(f"cannot move the new artifact into {final}: {exc.strerror or exc}",
                                    "check the artifact folder's permissions and rerun") from None
        return final
