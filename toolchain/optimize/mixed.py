"""Which nodes a mixed-precision variant keeps in float: those whose INT8 is slower on the target, where keeping
them pays for itself.

Input: one INT8 flavour's and FP32's per-node profiles on the target, attributed to the FP32 file's units
(toolchain.profiling.attribution: the groups both variants run as whole optimised nodes). A unit computed in
int8 is a candidate when its INT8 time is above its FP32 time; keeping it in float then

- saves its INT8 time minus its FP32 time,
- saves the conversions the target ran only because of it: profiled Q/DQ and layout nodes (Transpose,
  Reorder) whose neighbours would all be float,
- costs a QuantizeLinear or DequantizeLinear on each tensor between it and a neighbour that stays int8, at
  the per-element time the target's own Q/DQ nodes took in this profile (never less than the fastest one).

Units are added greedily, the largest net gain first, each time with the gains of the rest computed again
(a neighbour already float needs no conversion); only gains above zero count. The variant is then made
and measured like every candidate: the estimate proposes, the target's latency decides.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from math import prod
from typing import Any, Mapping, Sequence

from toolchain.profiling.layers import Layer, TypedModel

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class KeptUnit:
    """A unit kept in float for latency, with the estimate that chose it (milliseconds on the target)."""

    unit: str
    rows: tuple[str, ...]
    int8_ms: float
    fp32_ms: float
    conversions_saved_ms: float
    conversions_added_ms: float

    @property
    def gain_ms(self) -> float:
        return self.int8_ms + self.conversions_saved_ms - self.fp32_ms - self.conversions_added_ms

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rows": list(self.rows), "gain_ms": self.gain_ms}


def conversion_cost(int8_profile: Mapping[str, Any], int8: TypedModel) -> tuple[float, float]:
    """(ms per element, ms floor) of one Q/DQ on the target, from the INT8 profile's own Q/DQ nodes."""
    rates, times = [], []
    for extra in int8_profile["extras"]:
        if extra["op_type"] not in QDQ_OPS or not extra.get("int8_nodes"):
            continue
        node = int8.graph.by_name.get(extra["int8_nodes"][0])
        shape = int8.shapes.get(node.inputs[0]) if node is not None and node.inputs else None
        if shape and 0 not in shape:
            rates.append(extra["ms"] / prod(shape))
            times.append(extra["ms"])
    if not rates:
        return 0.0, 0.0
    return statistics.median(rates), min(times)


def plan_float_units(units: Sequence[Mapping[str, Any]], int8_profile: Mapping[str, Any], layers: Sequence[Layer],
                     fp32: TypedModel, int8: TypedModel) -> list[KeptUnit]:
    """The units to keep in float for latency, in the order chosen (empty: INT8 is not slower anywhere it pays)."""
    per_element, floor = conversion_cost(int8_profile, int8)
    by_name = {layer.name: layer for layer in layers}
    unit_of = {row: unit["unit"] for unit in units for row in unit["rows"]}
    float_rows = {layer.name for layer in layers if layer.int8_precision != "int8"}
    candidates = {unit["unit"]: unit for unit in units if by_name[unit["unit"]].int8_precision == "int8"
                  and unit["int8_ms"] > 0 and unit["fp32_ms"] > 0 and unit["int8_ms"] > unit["fp32_ms"]}
    graph = fp32.graph
    constants = graph.constants()
    chosen: list[KeptUnit] = []
    kept_rows: set[str] = set()
    counted: set[str] = set()  # extras already saved by a chosen unit

    def neighbours(rows: set[str]) -> list[tuple[str, set[str]]]:
        """(tensor, rows on its other side) for every tensor crossing the unit's boundary."""
        crossing = []
        for row in rows:
            node = graph.by_name[row]
            for tensor in node.inputs:
                if tensor and tensor not in constants and graph.producer.get(tensor) not in rows | {None}:
                    crossing.append((tensor, {graph.producer[tensor]}))
            for tensor in node.outputs:
                outside = {c for c in graph.consumers.get(tensor, ()) if c not in rows}
                if outside:
                    crossing.append((tensor, outside))
        return crossing

    def estimate(unit: Mapping[str, Any]) -> KeptUnit:
        rows = set(unit["rows"])
        floating = kept_rows | rows | float_rows
        added = 0.0
        for tensor, others in neighbours(rows):
            if any(other not in floating and unit_of.get(other) is not None for other in others):
                shape = fp32.shapes.get(tensor) or []
                elements = prod(shape) if shape and 0 not in shape else 0
                added += max(floor, per_element * elements)
        saved = sum(extra["ms"] for extra in int8_profile["extras"]
                    if extra["node"] not in counted and extra.get("beside")
                    and set(extra["beside"]) & rows and set(extra["beside"]) <= floating)
        return KeptUnit(unit["unit"], tuple(unit["rows"]), unit["int8_ms"], unit["fp32_ms"], saved, added)

    while candidates:
        best = max((estimate(unit) for unit in candidates.values()), key=lambda item: item.gain_ms)
        if best.gain_ms <= 0:
            break
        chosen.append(best)
        kept_rows |= set(best.rows)
        floating = kept_rows | float_rows
        counted |= {extra["node"] for extra in int8_profile["extras"]
                    if extra.get("beside") and set(extra["beside"]) <= floating}
        del candidates[best.unit]
    return chosen
