"""One results file that several benchmarks write a key of (scale.json: "ddp" and "fleet")."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

from toolchain.fsutil import atomic_write_json


def update_results(path: Path, key: str, value: Any) -> None:
    """Set one top-level key of a shared results file, keeping the others (exclusive lock, atomic replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        document = json.loads(path.read_text()) if path.is_file() else {}
        document[key] = value
        atomic_write_json(path, document)
