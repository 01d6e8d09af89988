"""What every pass of one run may read: the image sets, the reference answers, the parity tolerance, messages.

Everything expensive is loaded on first use, so a run whose passes all come from the cache loads no data
and imports neither torch nor onnx.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from toolchain.data.imagesets import ImageSet, ImageSetDefinition

if TYPE_CHECKING:
    import numpy as np

Messages = Callable[[str], None]


def silent(_: str) -> None:
    """The default message sink."""


@dataclass
class ImageSetSpec:
    """Where a run's calibration or eval images come from, and how to normalise them."""

    spec: ImageSetDefinition | Path | ImageSet  # an ImageSet: already loaded
    what: str
    mean: Any = None
    std: Any = None
    data_dir: Path | str | None = None

    def load(self) -> ImageSet:
        from toolchain.data.imagesets import load_array_file, load_image_set

        if isinstance(self.spec, ImageSet):
            return self.spec
        if isinstance(self.spec, Path):
            return load_array_file(self.spec, self.what)
        return load_image_set(self.spec, self.mean, self.std, self.data_dir)


class PassContext:
    """Shared, lazily loaded inputs of one pipeline run (see the module docstring)."""

    def __init__(self, *, model: str, artifact_id: str, calibration: ImageSetSpec, evaluation: ImageSetSpec,
                 reference: Callable[["PassContext"], "np.ndarray"], check_data: Callable[["PassContext"], None],
                 atol: float, rtol: float, scratch: Path, source: Any = None, facts: dict[str, Any] | None = None,
                 on_message: Messages = silent,
                 rounding: Callable[["PassContext"], "np.ndarray"] | None = None) -> None:
        self.model = model
        self.artifact_id = artifact_id
        self.atol, self.rtol = atol, rtol
        self.scratch = scratch
        self.source = source
        self.on_message = on_message
        #: what the workflow knows for the manifest (dataset, inputs, settings, hash inputs, versions)
        self.facts: dict[str, Any] = facts or {}
        self.timings: dict[str, float] = {}
        self.lineage: list[LineageEntry] = []
        self.manifest: Any = None  # the package pass's Manifest
        self._started = time.perf_counter()
        self._calibration, self._evaluation = calibration, evaluation
        self._reference, self._check_data, self._rounding = reference, check_data, rounding

    def elapsed(self) -> float:
        return time.perf_counter() - self._started

    @cached_property
    def images(self) -> tuple[ImageSet, ImageSet]:
        """(calibration, evaluation) image sets, drawn, normalised and checked against the model's input."""
        started = time.perf_counter()
        sets = self._calibration.load(), self._evaluation.load()
        self.timings["data_s"] = time.perf_counter() - started
        self.__dict__["images"] = sets  # the check below reads self.calibration/evaluation
        try:
            self._check_data(self)
        except BaseException:
            del self.__dict__["images"]
            raise
        return sets

    @property
    def calibration(self) -> ImageSet:
        return self.images[0]

    @property
    def evaluation(self) -> ImageSet:
        return self.images[1]

    @cached_property
    def reference(self) -> "np.ndarray":
        """The reference logits on the eval images (torch for an export, the source ONNX for a quantize)."""
        return self._reference(self)

    @cached_property
    def rounding(self) -> "np.ndarray | None":
        """Per eval image, how far float32 rounding alone moves the reference's logits (None: not allowed for).

        None where no float64 run exists (a foreign ONNX reference) and with --rtol 0 ("absolute only").
        """
        return self._rounding(self) if self._rounding is not None and self.rtol > 0 else None

    def check_parity(self, model: Path, what: str) -> tuple[float, float]:
        """(max |d|, top-1 agreement %) of ``model``'s logits vs the reference on the eval images, or a ParityError."""
        from toolchain.evaluators.accuracy import onnx_logits
        from toolchain.evaluators.parity import check_parity, top1_agreement

        logits = onnx_logits(model, self.evaluation.images)
        return (check_parity(self.reference, logits, self.atol, self.rtol, what, self.rounding),
                top1_agreement(self.reference, logits))

    def parity_basis(self) -> dict[str, Any]:
        """How parity was judged: the rule, the tolerance's parts and the images it was measured on."""
        from toolchain.evaluators.parity import BASIS, ROUNDING_BASIS, parity_tolerance

        rounding = self.rounding
        basis = {"basis": BASIS if rounding is None else ROUNDING_BASIS, "atol": self.atol, "rtol": self.rtol,
                 "images": len(self.evaluation), "tolerance": parity_tolerance(self.reference, self.atol, self.rtol,
                                                                              rounding)}
        return basis if rounding is None else {**basis, "float32_rounding_max": float(rounding.max())}


@dataclass
class LineageEntry:
    """One pass of a run as the manifest records it: what ran with which config, cached or not, how long."""

    name: str
    version: int
    config: dict[str, Any]
    key: str
    cached: bool
    seconds: float
    parity_max_abs: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = {"pass": self.name, "version": self.version, "config": self.config, "key": self.key,
                "cached": self.cached, "seconds": round(self.seconds, 4)}
        if self.parity_max_abs is not None:
            data["parity_max_abs"] = self.parity_max_abs
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LineageEntry":
        return cls(name=data["pass"], version=int(data["version"]), config=dict(data.get("config", {})),
                   key=str(data["key"]), cached=bool(data.get("cached", False)), seconds=float(data.get("seconds", 0)),
                   parity_max_abs=data.get("parity_max_abs"))
