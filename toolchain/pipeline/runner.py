"""The one runner: plans a list of passes, skips those whose inputs are unchanged, writes the lineage.

Each pass's cache key chains the key before it with the pass's name, version and config; the first key is
the hash of the run's own inputs (source file, data definitions, stack versions). Keys depend on inputs
only, never on outputs, so the whole plan - and the artifact id, the last key - is known before anything
runs. Every pass but the last writes into ``<pass cache>/<key>/`` (its files and ``record.json``, written
last; the cache is ``$TOOLCHAIN_PASS_CACHE``, else ``passes/`` in the tool's cache folder, outside the
artifact store, so a failed run leaves the store as it was); a later run with the same prefix of passes
resumes after the deepest cached one. The last pass writes into the folder the caller publishes (the artifact).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from toolchain.errors import ArtifactError
from toolchain.fsutil import atomic_write_json, cache_root, staging_folder, sweep_stale_staging
from toolchain.hashing import sha256_json
from toolchain.pipeline.context import LineageEntry, PassContext
from toolchain.pipeline.passes import ModelRecord, Pass

RECORD_NAME = "record.json"
# finished pass outputs kept (oldest first out); each is one model or two, a few MB at most here
PASS_CACHE_ENTRIES = 200


def chain_keys(base: dict[str, Any], passes: Sequence[Pass]) -> list[str]:
    """The cache key of every pass: each hashes the key before it and the pass's identity."""
    keys, previous = [], sha256_json(base)
    for item in passes:
        previous = sha256_json({"after": previous, **item.identity()})
        keys.append(previous)
    return keys


def default_pass_cache() -> Path:
    return Path(os.environ.get("TOOLCHAIN_PASS_CACHE") or cache_root() / "passes").expanduser()


@dataclass(frozen=True)
class PassCache:
    """Outputs of finished passes, by cache key."""

    root: Path

    def evict(self, keep: int = PASS_CACHE_ENTRIES) -> None:
        """Drop the oldest finished outputs beyond ``keep``."""
        entries = sorted((path.stat().st_mtime, path) for path in self.root.iterdir()
                         if path.is_dir() and not path.name.startswith("."))
        for _, path in entries[:max(0, len(entries) - keep)]:
            shutil.rmtree(path, ignore_errors=True)

    def load(self, key: str) -> tuple[ModelRecord, float] | None:
        """The record a pass left under this key and the seconds it took, if it finished (record.json is last)."""
        try:
            data = json.loads((self.root / key / RECORD_NAME).read_text())
            record = ModelRecord.from_json(data["record"], self.root)
            seconds = float(data.get("seconds", 0.0))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        paths = [record.fp32, *([record.int8] if record.int8 else []), *record.files.values()]
        return (record, seconds) if all(path.is_file() for path in paths) else None

    def seconds(self, key: str) -> float:
        """What a cached pass took (0 when its record cannot be read)."""
        try:
            return float(json.loads((self.root / key / RECORD_NAME).read_text()).get("seconds", 0.0))
        except (OSError, ValueError, AttributeError):
            return 0.0

    def publish(self, staging: Path, key: str, record: ModelRecord, seconds: float) -> ModelRecord:
        """Move a pass's finished folder to its key; the record's paths follow it."""
        final = self.root / key
        data = _relocated(record.to_json(self.root), staging.name, key)
        atomic_write_json(staging / RECORD_NAME, {"record": data, "seconds": seconds})
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)  # an incomplete twin (its record.json never written)
        try:
            staging.rename(final)
        except OSError as exc:
            raise ArtifactError(f"cannot store a pass result in {final}: {exc.strerror or exc}",
                                "check the artifact folder's permissions and free space") from None
        return ModelRecord.from_json(data, self.root)


def _relocated(data: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """A serialised record whose paths under folder ``old`` now point under ``new``."""
    prefix = f"{old}/"

    def move(text: str | None) -> str | None:
        return f"{new}/{text[len(prefix):]}" if text and text.startswith(prefix) else text

    return {**data, "fp32": move(data["fp32"]), "int8": move(data["int8"]),
            "files": {name: move(text) for name, text in data["files"].items()}}


class Runner:
    """Runs a plan of passes over one context (see the module docstring)."""

    def __init__(self, cache: PassCache, context: PassContext) -> None:
        self.cache = cache
        self.context = context
        self.lineage = context.lineage

    def run(self, passes: Sequence[Pass], base: dict[str, Any], final_folder: Path,
            record: ModelRecord | None = None) -> ModelRecord:
        """Run ``passes`` (the last one into ``final_folder``), resuming after the deepest cached pass."""
        keys = chain_keys(base, passes)
        start, deepest_seconds = 0, 0.0
        for index in range(len(passes) - 2, -1, -1):
            found = self.cache.load(keys[index])
            if found is not None:
                (record, deepest_seconds), start = found, index + 1
                break
        for index in range(start):
            seconds = deepest_seconds if index == start - 1 else self.cache.seconds(keys[index])
            self.lineage.append(self._entry(passes[index], keys[index], True, seconds, record))
        if start:
            self.context.on_message(f"reusing {start} cached pass(es): {', '.join(p.name for p in passes[:start])}")
        sweep_stale_staging(self.cache.root)
        for index in range(start, len(passes)):
            record = self._run_one(passes[index], keys[index], record, final_folder if index == len(passes) - 1
                                   else None)
        assert record is not None
        return record

    def _run_one(self, item: Pass, key: str, record: ModelRecord | None, final_folder: Path | None) -> ModelRecord:
        started = time.perf_counter()
        if final_folder is not None:
            result = item.run(record, self.context, final_folder)  # type: ignore[arg-type]
            return self._checked(item, key, result, started, cache=False)
        with staging_folder(self.cache.root, "TOOLCHAIN_PASS_CACHE") as folder:
            result = item.run(record, self.context, folder)  # type: ignore[arg-type]
            result = self._checked(item, key, result, started, cache=True)
            published = self.cache.publish(folder, key, result, self.lineage[-1].seconds)
        self.cache.evict()
        return published

    def _checked(self, item: Pass, key: str, result: ModelRecord, started: float, cache: bool) -> ModelRecord:
        if item.checks_parity:
            measured, agreement = self.context.check_parity(result.fp32, f"{item.name} (ONNX vs the reference)")
            result = result.with_notes(parity={**self.context.parity_basis(), f"{item.name}_max_abs": measured,
                                               f"{item.name}_top1_agreement_pct": agreement})
        seconds = time.perf_counter() - started
        self.context.timings[f"{item.name}_s"] = seconds
        self.lineage.append(self._entry(item, key, False, seconds, result))
        return result

    @staticmethod
    def _entry(item: Pass, key: str, cached: bool, seconds: float, record: ModelRecord | None) -> LineageEntry:
        parity = record.note("parity").get(f"{item.name}_max_abs") if record is not None else None
        return LineageEntry(item.name, item.version, item.config_record(), key, cached, seconds, parity)
