"""The artifact store: content-addressed folders ``artifacts/<model>/<id>/`` with a manifest.

    model.fp32.onnx   the verified FP32 model (weights embedded)
    model.int8.onnx   the static INT8 model that passed the accuracy gate (weights embedded)
    evalset.npz       labeled eval images, normalised exactly as the host fed the models, with the
                      host's argmax answers of both models (pred_fp32, pred_int8)
    manifest.json     what made it (inputs with sha256, settings, versions) and how good it is
    bench/            benchmark results, <target>-<UTC time>.json
    profile/          `toolchain profile` records, <UTC time>.json, and a roofline SVG per machine

``<model>/targets/<target key>.json`` records the artifact `toolchain optimize` chose for a target (its
manifest's ``optimize`` section says why); `latest(model, target)` returns it for that target, and the newest
plain export otherwise.

The id is the first 16 hex digits of the sha256 of the canonical JSON of every input (model,
checkpoint sha256, dataset, export and quantization settings, calibration and eval-set definitions,
toolchain version): the same inputs find the same folder and no work is done. A folder is built in
a staging directory inside the store and renamed into place complete, manifest last; a failed run
leaves nothing behind, and one a killed run left is swept by the next. One loader (`load_artifact`)
checks a folder's files against its manifest for the store, deploy and bench. No torch or onnx imports here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from toolchain.errors import ArtifactError, UsageError
from toolchain.fsutil import atomic_write_json, staging_folder, sweep_stale_staging
from toolchain.hashing import sha256_file, sha256_json
from toolchain.manifest import (ARTIFACT_FILES, EVALSET_NAME, FP32_NAME, INT8_NAME, MANIFEST_NAME, Manifest,
                                read_manifest)

__all__ = ["ARTIFACT_FILES", "BENCH_DIR", "EVALSET_NAME", "FP32_NAME", "INT8_NAME", "MANIFEST_NAME", "Artifact",
           "ArtifactFile", "ArtifactStore", "artifact_id", "file_record", "is_artifact_id", "load_artifact",
           "read_evalset", "read_manifest", "utc_now", "write_evalset"]

BENCH_DIR = "bench"
# <model>/targets/<target key>.json: the artifact `toolchain optimize` chose for that target
TARGETS_DIR = "targets"
ID_LENGTH = 16
ARTIFACT_ID = re.compile(rf"^[0-9a-f]{{{ID_LENGTH}}}$")


def artifact_id(inputs: dict[str, Any]) -> str:
    """First 16 hex digits of the sha256 of the inputs' canonical JSON."""
    return sha256_json(inputs)[:ID_LENGTH]


def is_artifact_id(text: str) -> bool:
    """Whether ``text`` is an artifact id (16 lower-case hex digits): the one validator."""
    return bool(ARTIFACT_ID.match(text))


def file_record(path: Path) -> dict[str, Any]:
    """sha256 and size of a file, as the manifest lists it."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
class ArtifactFile:
    """A file of an artifact with the hash it was checked to have."""

    name: str
    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Artifact:
    """An artifact folder whose files were checked against its manifest."""

    directory: Path
    manifest: Manifest
    files: tuple[ArtifactFile, ...]

    @property
    def artifact_id(self) -> str:
        return self.manifest.artifact_id

    @property
    def model(self) -> str:
        return self.manifest.model

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.files)


def load_artifact(directory: "Path | Artifact", verify: bool = True) -> Artifact:
    """Read an artifact folder's manifest and check every listed file against its recorded sha256.

    The manifest itself is listed last among the files (deploy ships it beside the models). An Artifact is
    returned as it is (it was checked when it was read); ``verify=False`` takes the manifest's hashes
    without reading the files (for a caller that checks them another way).
    """
    if isinstance(directory, Artifact):
        return directory
    directory = directory.parent if directory.name == MANIFEST_NAME else directory
    manifest = read_manifest(directory)
    path = directory / MANIFEST_NAME
    if not is_artifact_id(manifest.artifact_id):
        raise ArtifactError(f"{path}: artifact_id {manifest.artifact_id!r} is not {ID_LENGTH} hex characters",
                            "re-create the artifact (toolchain export)")
    missing = [name for name in ARTIFACT_FILES if name not in manifest.files]
    if missing:
        raise ArtifactError(f"{path} lists no {', '.join(missing)}", "re-create the artifact (toolchain export)")
    files = []
    for name, record in sorted(manifest.files.items()):
        file_path = directory / name
        if "/" in name or not file_path.is_file():
            raise ArtifactError(f"artifact file {file_path} is missing", "re-create the artifact (toolchain export)")
        digest = sha256_file(file_path) if verify else record.sha256
        if digest != record.sha256:
            raise ArtifactError(f"{file_path} changed since the artifact was made (sha256 differs from "
                                f"{MANIFEST_NAME})", "re-create the artifact instead of editing its files")
        files.append(ArtifactFile(name, file_path, digest, file_path.stat().st_size))
    files.append(ArtifactFile(MANIFEST_NAME, path, sha256_file(path), path.stat().st_size))
    return Artifact(directory, manifest, tuple(files))


@dataclass(frozen=True)
class ArtifactStore:
    """Artifact folders under one root (``artifacts/`` by default)."""

    root: Path

    def folder(self, model: str, identifier: str) -> Path:
        return self.root / model / identifier

    def find(self, model: str, identifier: str) -> Path | None:
        """The complete, intact folder for these inputs, if one was made before."""
        folder = self.folder(model, identifier)
        try:
            artifact = load_artifact(folder)
        except ArtifactError:
            return None
        return folder if artifact.artifact_id == identifier else None

    def latest(self, model: str, target: str | None = None) -> Path:
        """The artifact to use for a model: the one `toolchain optimize` chose for `target` (a target key) where
        it chose one, else the newest complete export (by the manifest's creation time; artifacts optimized for
        a target are that target's only)."""
        if target is not None:
            chosen = self.chosen(model, target)
            if chosen is not None:
                return chosen
        found = []
        for manifest_path in (self.root / model).glob(f"*/{MANIFEST_NAME}"):
            with contextlib.suppress(ArtifactError):
                manifest = read_manifest(manifest_path.parent)
                if not manifest.optimize:
                    found.append((manifest.created, manifest_path.parent.name, manifest_path.parent))
        if not found:
            raise ArtifactError(f"no artifact of {model} in {self.root}",
                                f"make one: toolchain export --model {model}")
        return max(found)[2]

    def choice_path(self, model: str, target: str) -> Path:
        """Where the artifact `toolchain optimize` chose for a target is recorded: <model>/targets/<key>.json."""
        return self.root / model / TARGETS_DIR / f"{target}.json"

    def chosen(self, model: str, target: str) -> Path | None:
        """The intact artifact `toolchain optimize` chose for a target (None: it chose none, or it is gone)."""
        try:
            record = json.loads(self.choice_path(model, target).read_text())
        except (OSError, ValueError):
            return None
        identifier = record.get("artifact_id") if isinstance(record, dict) else None
        return self.find(model, identifier) if isinstance(identifier, str) and is_artifact_id(identifier) else None

    def choose(self, model: str, target: str, record: dict[str, Any]) -> Path:
        """Record the artifact `toolchain optimize` chose for a target (``record`` names its ``artifact_id``)."""
        path = self.choice_path(model, target)
        atomic_write_json(path, record)
        return path

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
        """A fresh folder inside the store to build an artifact in; removed (with a store made for it) on failure."""
        existed = self.root.exists()
        sweep_stale_staging(self.root)
        try:
            with staging_folder(self.root) as folder:
                yield folder
        except BaseException:
            if not existed:
                with contextlib.suppress(OSError):
                    self.root.rmdir()  # only if still empty: the store was created for this run
            raise

    def publish(self, staging: Path, model: str, identifier: str) -> Path:
        """Move a complete staging folder to its final name (a concurrent twin wins if it was first)."""
        if not ARTIFACT_ID.match(identifier) or "/" in model or model.startswith("."):
            raise UsageError(f"cannot store artifact {model}/{identifier}", "model names are [a-z0-9._-]")
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
