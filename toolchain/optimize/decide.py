"""The choice: the fastest candidate whose top-1 on the target passes the accuracy gate; FP32 when it is fastest.

Latency is each candidate's p50 on the target, the median over the rounds (the candidates take turns, in
a rotated order each round, so a slow spell of the machine does not fall on one of them). The gate is the
artifact's: the drop from the reference top-1 must not exceed ``max_drop`` percentage points, where the
reference is FP32's top-1 measured on the target in the same run (the parent checkpoint's FP32 top-1 for a
quantization-aware fine-tune, as the export gate measures it). Every candidate gets a verdict and a reason.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from toolchain.optimize.candidates import FP32, MIXED, Candidate

CHOSEN, LOST, FAILED, NOT_MEASURED = "chosen", "lost", "fails the gate", "not measured"


@dataclass
class Measurement:
    """One candidate on the target: its p50 per round and top-1 on the eval set (or why it could not run)."""

    p50_rounds: list[float] = field(default_factory=list)
    top1: float | None = None
    count: int = 0
    error: str | None = None

    @property
    def p50(self) -> float | None:
        return statistics.median(self.p50_rounds) if self.p50_rounds else None

    @property
    def spread(self) -> float:
        return max(self.p50_rounds) - min(self.p50_rounds) if len(self.p50_rounds) > 1 else 0.0


@dataclass
class Decision:
    winner: str
    variant: str  # "fp32" or "int8": which of the artifact's two models the target should run
    reference_top1: float
    entries: list[dict[str, Any]]


def decide(candidates: Sequence[Candidate], measured: dict[str, Measurement], reference_top1: float | None,
           max_drop: float) -> Decision:
    """The decision log over every candidate, the winner first among equals of the order given."""
    fp32 = measured.get(FP32)
    if fp32 is None or fp32.p50 is None or fp32.top1 is None:
        raise ValueError("FP32 must be measured: it is the reference and always a candidate")
    reference = fp32.top1 if reference_top1 is None else reference_top1
    entries: dict[str, dict[str, Any]] = {}
    passing: list[tuple[float, int, str]] = []
    for order, candidate in enumerate(candidates):
        entry = candidate.log()
        result = measured.get(candidate.name)
        if candidate.failure or result is None or result.error or result.p50 is None:
            entry.update(verdict=NOT_MEASURED, why=candidate.failure or (result.error if result else None)
                         or "not measured on the target")
            entries[candidate.name] = entry
            continue
        drop = round(reference - (result.top1 or 0.0), 4)
        # the gate bounds what quantization costs: the FP32 model itself always stands (for a fine-tune whose FP32
        # is already below its parent's, the INT8 candidates are held to the parent all the same)
        passed = drop <= max_drop or candidate.kind == FP32
        entry["target"] = {"p50_ms": result.p50, "p50_ms_rounds": result.p50_rounds, "spread_ms": result.spread,
                           "top1": result.top1, "count": result.count, "drop_pp": drop, "passed": passed}
        if not passed:
            entry.update(verdict=FAILED, why=f"fails the accuracy gate on the target: top-1 {result.top1:.2f}% is "
                                             f"{drop:.2f} pp below the reference {reference:.2f}% (max {max_drop:g} pp)")
        else:
            passing.append((result.p50, order, candidate.name))
        entries[candidate.name] = entry
    passing.sort()
    winner = passing[0][2]
    best = measured[winner]
    for p50, _, name in passing:
        entry = entries[name]
        if name == winner:
            runner = passing[1] if len(passing) > 1 else None
            entry.update(verdict=CHOSEN, why=f"the fastest candidate that passes the gate: p50 {p50:.4f} ms"
                         + (f", {runner[0] - p50:.4f} ms ahead of {runner[2]}" if runner else "")
                         + (f" (within the spread of its rounds, {best.spread:.4f} ms)"
                            if runner and runner[0] - p50 < best.spread else ""))
        else:
            entry.update(verdict=LOST, why=f"slower than {winner}: p50 {p50:.4f} ms vs {best.p50:.4f} ms "
                                           f"(+{p50 - best.p50:.4f} ms, +{100.0 * (p50 / best.p50 - 1):.1f} %)")
    for candidate in candidates:  # did the nodes a mixed variant keeps in float pay for themselves, measured?
        flavour = measured.get(f"int8-{candidate.flavour}") if candidate.kind == MIXED else None
        own = measured.get(candidate.name)
        if flavour is not None and flavour.p50 is not None and own is not None and own.p50 is not None:
            delta = own.p50 - flavour.p50
            entries[candidate.name]["against_its_flavour"] = {
                "flavour": f"int8-{candidate.flavour}", "p50_delta_ms": delta, "paid": delta < 0,
                "said": (f"{-delta:.4f} ms faster than int8-{candidate.flavour}: the nodes kept in float paid for "
                         "themselves" if delta < 0 else f"{delta:.4f} ms slower than int8-{candidate.flavour}: "
                         "the nodes kept in float did not pay for themselves")}
    return Decision(winner, FP32 if winner == FP32 else "int8", reference,
                    [entries[candidate.name] for candidate in candidates])
