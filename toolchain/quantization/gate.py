"""The accuracy gate's search: which nodes to keep in float so that INT8 top-1 drops at most ``max_drop``.

When the model as quantized drops more than the gate allows, every quantized node is scored by the
quantization noise around it (`toolchain.quantization.sensitivity`, measured on calibration images,
not on the eval set) and the lowest-scoring nodes are kept in float, as few as possible: doubling
until a count passes, then bisection down to the smallest passing count. Each attempt re-quantizes
with the cached calibration ranges and is measured on the eval set.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from toolchain.errors import AccuracyGateError
from toolchain.evaluators.accuracy import accuracy_from_logits, onnx_logits
from toolchain.pipeline.config import QuantSettings
from toolchain.quantization.ort import quantize_static_int8

# Images whose activations score the nodes for the gate (from the calibration set).
SENSITIVITY_IMAGES = 32
# The gate may keep at most this share of the quantizable nodes in float (else an "INT8" model
# would be a float model with extra steps).
DEFAULT_MAX_KEPT_FRACTION = 0.5

Messages = Callable[[str], None]


@dataclass(frozen=True)
class GateStep:
    """One quantization attempt: which nodes were kept in float and what the INT8 model scored."""

    kept_float: tuple[str, ...]
    int8_top1: float
    drop_pp: float
    seconds: float

    def to_dict(self) -> dict:
        return {"kept_float": list(self.kept_float), "int8_top1": self.int8_top1, "drop_pp": self.drop_pp,
                "seconds": self.seconds}


@dataclass(frozen=True)
class GateOutcome:
    """An INT8 model that passed the gate, and the attempts that led to it."""

    path: Path
    fp32_top1: float
    int8_top1: float
    drop_pp: float
    kept_float: tuple[str, ...]
    steps: tuple[GateStep, ...]
    notes: Mapping[str, Any] = field(default_factory=dict)  # the gate pass's notes: the manifest's decision log

    @classmethod
    def from_notes(cls, path: Path, gate: dict) -> "GateOutcome":
        """From the gate pass's ``quantization`` notes."""
        steps = tuple(GateStep(tuple(step["kept_float"]), step["int8_top1"], step["drop_pp"], step["seconds"])
                      for step in gate["steps"])
        return cls(path, gate["fp32_top1"], gate["int8_top1"], gate["drop_pp"], tuple(gate["kept_float"]), steps, gate)


class GateSearch:
    """Attempts at one model with one set of calibration ranges, each measured on the eval set."""

    def __init__(self, prepared: Path, cache: Path, settings: QuantSettings, images: np.ndarray, labels: np.ndarray,
                 fp32_top1: float, scratch: Path, on_message: Messages, method_pinned: bool = True,
                 equalization: dict | None = None) -> None:
        self.prepared, self.cache, self.settings = prepared, cache, settings
        self.equalization = equalization  # what `toolchain.graph.equalize` did to ``prepared``, if it did
        self.method_pinned = method_pinned  # False: --method auto chose this calibration among others
        self.images, self.labels, self.fp32_top1 = images, labels, fp32_top1
        self.scratch, self.on_message = scratch, on_message
        self.attempts: dict[tuple[str, ...], tuple[GateStep, Path]] = {}

    @property
    def first(self) -> GateStep:
        """The attempt with every node INT8."""
        return self.attempts[()][0]

    def attempt(self, kept: tuple[str, ...]) -> GateStep:
        """Quantize keeping ``kept`` in float and measure the drop (each set is measured once)."""
        if kept not in self.attempts:
            path = self.scratch / f"int8-{len(self.attempts)}.onnx"
            started = time.perf_counter()
            quantize_static_int8(self.prepared, path, self.settings, self.cache, kept)
            self.attempts[kept] = (self.measure(kept, path, started), path)
        return self.attempts[kept][0]

    def measure(self, kept: tuple[str, ...], path: Path, started: float | None = None) -> GateStep:
        """Top-1 of the INT8 model at ``path`` (quantized keeping ``kept`` in float) on the eval set."""
        started = time.perf_counter() if started is None else started
        top1 = accuracy_from_logits(onnx_logits(path, self.images), self.labels).top1
        step = GateStep(kept, top1, round(self.fp32_top1 - top1, 4), time.perf_counter() - started)
        self.on_message(f"INT8 top-1 {top1:.2f}% (FP32 {self.fp32_top1:.2f}%, drop {step.drop_pp:+.2f} pp)"
                        + (f" with {len(kept)} node(s) kept in float" if kept else ""))
        return step

    def passes(self, ranking: tuple[str, ...], count: int) -> bool:
        return self.attempt(ranking[:count]).drop_pp <= self.settings.max_drop

    def smallest_passing(self, ranking: tuple[str, ...], limit: int, candidates: int) -> int:
        """The fewest top-ranked nodes kept in float that pass the gate (doubling, then bisection)."""
        low, high = 0, 1
        while high <= limit and not self.passes(ranking, high):
            low, high = high, high * 2
        if high > limit:
            if not (limit > low and self.passes(ranking, limit)):
                raise self.failure(limit, candidates)
            high = limit
        while high - low > 1:  # between a failing low and a passing high
            middle = (low + high) // 2
            low, high = (low, middle) if self.passes(ranking, middle) else (middle, high)
        return high

    def pruned(self, kept: tuple[str, ...], budget: int = 8) -> tuple[str, ...]:
        """``kept`` (a passing set) less each node whose return to INT8 still passes, tried lowest-ranked first.

        The ranking is an estimate and the drop is not monotonic in it (a node can pass with its neighbour
        in float and not alone): every removal is re-measured, and one that fails is stepped back from.
        At most ``budget`` re-measurements.
        """
        for node in reversed(kept[1:]):
            if budget <= 0:
                break
            trial = tuple(name for name in kept if name != node)
            budget -= trial not in self.attempts
            if self.attempt(trial).drop_pp <= self.settings.max_drop:
                kept = trial
        return kept

    def failure(self, limit: int, candidates: int) -> AccuracyGateError:
        first = self.first
        best = min(step.drop_pp for step, _ in self.attempts.values())
        return AccuracyGateError(
            f"INT8 top-1 drop stays above --max-drop {self.settings.max_drop:g} pp: {first.drop_pp:.2f} pp "
            f"as quantized, best {best:.2f} pp with up to {limit} of {candidates} nodes kept in float "
            f"(FP32 {self.fp32_top1:.2f}%, {len(self.labels)} eval images)",
            "raise --max-drop or --max-kept-float, or use more calibration images"
            + (", or --method auto (it tries minmax, percentile at three levels and entropy)" if self.method_pinned else ""))

    def calibration_record(self, seconds: float) -> dict:
        """This search's calibration as the manifest's decision log has it: method, all-INT8 result, seconds."""
        first = self.first
        percentile = {"percentile": self.settings.percentile} if self.settings.method == "percentile" else {}
        equalized = {"equalized": True} if self.equalization else {}
        return {"method": self.settings.method, **percentile, **equalized, "format": self.settings.format,
                "per_channel": self.settings.per_channel, "int8_top1": first.int8_top1, "drop_pp": first.drop_pp,
                "passed": first.drop_pp <= self.settings.max_drop, "calibration_seconds": round(seconds, 3),
                "quantize_and_eval_seconds": round(first.seconds, 3)}

    def steps(self) -> list[GateStep]:
        return [step for step, _ in self.attempts.values()]


def kept_float_limit(settings: QuantSettings, candidates: int) -> int:
    """How many nodes the gate may keep in float: --max-kept-float, else half of the quantizable ones."""
    if settings.max_kept_float is not None:
        return settings.max_kept_float
    return math.ceil(candidates * DEFAULT_MAX_KEPT_FRACTION)
