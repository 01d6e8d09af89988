"""What a pass is: a declared config, `run(record) -> record`, and a cache key the runner derives from them.

Anchored on Olive's `Pass`: the pass does one job on the model it is handed and writes its files into the
folder it is given; it never measures (evaluators judge), never looks for cached results and never writes
lineage (the runner does both). Passes register by name, so a pipeline is a list of names:

    @register_pass
    class MyPass(Pass):
        name = "my-pass"
        def run(self, record, context, folder): ...

Pass modules import nothing heavy at module level: the runner builds a plan (and the artifact id) from the
passes' names, versions and configs without importing torch or onnx.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from toolchain.errors import UsageError

if TYPE_CHECKING:
    from toolchain.pipeline.context import PassContext


@dataclass(frozen=True)
class ModelRecord:
    """What one pass hands the next: the current model files and what is known about them.

    ``files`` are extra files a later pass needs (the calibration cache, the prepared graph); ``notes`` are
    the facts passes contribute to the manifest, one section each (``nodes``, ``parity``, ``quantization``...).
    """

    fp32: Path
    input_name: str
    output_name: str
    opset: int
    int8: Path | None = None
    files: Mapping[str, Path] = field(default_factory=dict)
    notes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def with_notes(self, **sections: Mapping[str, Any]) -> "ModelRecord":
        """A copy whose note sections are updated key by key with these."""
        merged = {name: dict(values) for name, values in self.notes.items()}
        for name, values in sections.items():
            merged.setdefault(name, {}).update(values)
        return replace(self, notes=merged)

    def with_files(self, **files: Path) -> "ModelRecord":
        return replace(self, files={**self.files, **files})

    def note(self, section: str) -> dict[str, Any]:
        return dict(self.notes.get(section, {}))

    def to_json(self, root: Path) -> dict[str, Any]:
        """Plain data, with paths relative to ``root`` (the pass cache) where they lie inside it."""
        def relative(path: Path | None) -> str | None:
            if path is None:
                return None
            return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

        return {"fp32": relative(self.fp32), "int8": relative(self.int8), "input_name": self.input_name,
                "output_name": self.output_name, "opset": self.opset,
                "files": {name: relative(path) for name, path in self.files.items()},
                "notes": {name: dict(values) for name, values in self.notes.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], root: Path) -> "ModelRecord":
        def absolute(text: str | None) -> Path | None:
            return None if text is None else root / text

        fp32 = absolute(data["fp32"])
        assert fp32 is not None
        return cls(fp32=fp32, int8=absolute(data.get("int8")), input_name=data["input_name"],
                   output_name=data["output_name"], opset=int(data["opset"]),
                   files={name: root / text for name, text in data.get("files", {}).items()},
                   notes=data.get("notes", {}))


class Pass(ABC):
    """One step of the pipeline over a `ModelRecord`."""

    #: the registry name, used in pipeline lists, the lineage and the cache key
    name: ClassVar[str]
    #: bump when what the pass writes changes for the same config: cached outputs of the old version are not reused
    version: ClassVar[int] = 1
    #: the runner checks parity against the reference after this pass (it rewrites the float graph)
    checks_parity: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        self.config = config

    def config_record(self) -> dict[str, Any]:
        """The config as plain data (hashed into the cache key and written into the lineage)."""
        if self.config is None:
            return {}
        if is_dataclass(self.config):
            return asdict(self.config)
        return dict(self.config)

    def identity(self) -> dict[str, Any]:
        return {"pass": self.name, "version": self.version, "config": self.config_record()}

    @abstractmethod
    def run(self, record: ModelRecord, context: "PassContext", folder: Path) -> ModelRecord:
        """Do the pass's job on ``record``; new files go into ``folder``; returns the record for the next pass."""


_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available by its name."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a pass named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def create_pass(name: str, config: Any = None) -> Pass:
    """An instance of the registered pass ``name`` with ``config``."""
    import toolchain.passes  # noqa: F401  (the built-in passes register on import)

    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        raise UsageError(f"no pass named {name!r}",
                         f"did you mean {', '.join(close)}?" if close else f"passes: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](config)


def registered_passes() -> list[str]:
    import toolchain.passes  # noqa: F401

    return sorted(_REGISTRY)
