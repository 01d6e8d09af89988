"""Each profiled onnxruntime node's time, given to the row of the FP32 file it computes.

Per variant (FP32, INT8) and machine, every row of the FP32 file gets one status:

- ``own``: the time of the optimised node(s) that compute it (and the rows fused with it);
- ``fused``: computed inside another row's optimised node (``into``); its time is that row's;
- ``folded``: INT8 only: the quantizer removed it (a Relu whose clamp the quantized range does) (``into``);
- ``removed``: no kernel runs for it (a constant onnxruntime folds at load, an Identity it drops);
- ``none``: INT8 only: the INT8 file has no node for it (the reason says why).

Profiled nodes that compute no row (layout changes onnxruntime inserted, the INT8 file's Q/DQ conversions)
are ``extras``, with their time, the reason and the rows beside them. Rows' times plus extras' times are the
sum of every profiled node: nothing is dropped or counted twice.

Fusion differs between the variants (x86 FP32 runs Conv + Add + Relu as one NCHWc node, INT8 as QLinearConv
and QLinearAdd), so INT8/FP32 ratios are taken over **units**: the smallest groups of rows that both
variants compute as whole optimised nodes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

from toolchain.profiling.join import Graph, Int8Map, OptimizedMap, map_optimized
from toolchain.profiling.layers import Layer

OWN, FUSED, FOLDED, REMOVED, NONE = "own", "fused", "folded", "removed", "none"


def _primary(names: Sequence[str], layers: Mapping[str, Layer], order: Mapping[str, int]) -> str:
    """The row that stands for a fused group: the most MACs, then parameters, then the first in the file."""
    return max(names, key=lambda name: (layers[name].macs, layers[name].params, -order[name]))


def attribute(result: Mapping[str, Any], layers: Sequence[Layer], fp32: Graph, int8: Graph | None,
              int8_map: Int8Map | None) -> dict[str, Any]:
    """One variant's profile (a result of the profile agent) over the rows of the FP32 file.

    `int8` and `int8_map` are given for the INT8 variant: its optimised graph maps to the INT8 file, which
    maps to the FP32 rows.
    """
    by_name = {layer.name: layer for layer in layers}
    order = {layer.name: index for index, layer in enumerate(layers)}
    file = int8 if int8 is not None else fp32
    graph = result.get("optimized_graph")
    optimized = Graph.from_agent(graph) if graph else None
    # without the optimised graph (onnxruntime could not save it) only the nodes it ran under their own names map
    profiled = {node["name"] for node in result["nodes"]}
    mapping = map_optimized(file, optimized) if optimized is not None else OptimizedMap(
        group={node.name: node.name for node in file.nodes if node.name in profiled})
    members = mapping.members()
    rows: dict[str, dict[str, Any]] = {layer.name: {"status": None, "ms": 0.0, "ort_nodes": []} for layer in layers}
    extras = []
    row_of: dict[str, str] = {}  # profiled node -> the row it gives its time to
    folded_into: dict[str, list[str]] = defaultdict(list)  # INT8 node -> FP32 rows the quantizer folded into it
    if int8_map is not None:
        for row, (source, _) in int8_map.folded.items():
            if source is not None:
                folded_into[source].append(row)
    for node in result["nodes"]:
        name, ms = node["name"], node["time_us"] / 1000.0
        inside = members.get(name, [])
        if int8_map is None:
            computed, folded = [m for m in inside if m in rows], []
        else:
            computed = [int8_map.fp32_of[m] for m in inside if m in int8_map.fp32_of]
            folded = [row for m in inside for row in folded_into.get(m, ())]
        if not computed:
            extras.append({"node": name, "op_type": node.get("op_type", ""), "ms": ms,
                           "why": _extra_reason(name, inside, mapping, int8_map),
                           "int8_nodes": inside if int8_map is not None else []})
            continue
        primary = _primary(computed, by_name, order)
        row_of[name] = primary
        rows[primary]["status"] = OWN
        rows[primary]["ms"] += ms
        rows[primary]["ort_nodes"].append(name)
        for other in computed:
            if other != primary and rows[other]["status"] != OWN:
                rows[other].update(status=FUSED, into=primary, ort_nodes=[name])
        for other in folded:
            if rows[other]["status"] is None:
                rows[other].update(status=FOLDED, into=primary, ort_nodes=[name],
                                   why=int8_map.folded[other][1] if int8_map else "")
    if optimized is not None:
        for extra in extras:
            extra["beside"] = _beside(extra["node"], optimized, row_of)
    _settle(rows, mapping, int8_map)
    total = sum(node["time_us"] for node in result["nodes"]) / 1000.0
    counts = defaultdict(int)
    for row in rows.values():
        counts[row["status"]] += 1
    return {"variant": result["variant"], "threads": result["threads"], "batch": result["batch"],
            "runs": result["runs"], "graph_optimization_level": result.get("graph_optimization_level"),
            "latency_ms": result["latency_ms"], "model_run_ms": result.get("model_run_ms"),
            "optimized_nodes": len(optimized.nodes) if optimized else None, "profiled_nodes": len(result["nodes"]),
            "node_total_ms": total, "rows": rows, "extras": extras,
            "coverage": {"rows": len(rows), **{status: counts[status] for status in (OWN, FUSED, FOLDED, REMOVED,
                                                                                     NONE)},
                         "unattributed": counts[None], "extras": len(extras),
                         "attributed_ms": sum(row["ms"] for row in rows.values()),
                         "extras_ms": sum(extra["ms"] for extra in extras), "total_ms": total}}


def _beside(name: str, graph: Graph, row_of: Mapping[str, str]) -> list[str]:
    """The rows whose nodes an extra node sits between (through other extras: a Transpose next to a Q/DQ)."""
    found: list[str] = []
    seen, frontier = {name}, [name]
    while frontier:
        step = []
        for current in frontier:
            node = graph.by_name.get(current)
            if node is None:
                continue
            neighbours = [graph.producer[t] for t in node.inputs if t in graph.producer]
            neighbours += [c for t in node.outputs for c in graph.consumers.get(t, ())]
            for other in neighbours:
                if other in seen:
                    continue
                seen.add(other)
                if other in row_of:
                    found.append(row_of[other])
                else:
                    step.append(other)
        frontier = step
    return list(dict.fromkeys(found))


def _extra_reason(name: str, inside: list[str], mapping: OptimizedMap, int8_map: Int8Map | None) -> str:
    if name in mapping.extras:
        return mapping.extras[name]
    if int8_map is not None:
        reasons = [int8_map.int8_only[m] for m in inside if m in int8_map.int8_only]
        if reasons:
            return reasons[0]
    return "profiled, but not in the optimised graph onnxruntime saved" if not inside else "no FP32 node"


def _settle(rows: dict[str, dict[str, Any]], mapping: OptimizedMap, int8_map: Int8Map | None) -> None:
    """The status of each row no profiled node gave time to: removed, folded or without an INT8 node."""
    for name, row in rows.items():
        if row["status"] is not None:
            continue
        if int8_map is None:
            if name in mapping.missing:
                row.update(status=REMOVED, why=mapping.missing[name])
            continue
        counterpart = int8_map.counterpart.get(name)
        if counterpart is not None and counterpart in mapping.missing:
            row.update(status=REMOVED, why=mapping.missing[counterpart])
        elif name in int8_map.folded:
            source, why = int8_map.folded[name]
            row.update(status=FOLDED if source else REMOVED, why=why, **({"into_int8": source} if source else {}))
        elif name in int8_map.unmatched:
            row.update(status=NONE, why=int8_map.unmatched[name])


def units(fp32: Mapping[str, Any], int8: Mapping[str, Any], layers: Sequence[Layer]) -> list[dict[str, Any]]:
    """Rows grouped so that both variants compute each group as whole optimised nodes, with both times."""
    parent = {layer.name: layer.name for layer in layers}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for variant in (fp32, int8):
        for name, row in variant["rows"].items():
            if row.get("into") in parent:
                parent[find(name)] = find(row["into"])
    grouped: dict[str, list[str]] = defaultdict(list)
    for layer in layers:
        grouped[find(layer.name)].append(layer.name)
    by_name = {layer.name: layer for layer in layers}
    order = {layer.name: index for index, layer in enumerate(layers)}
    found = []
    for names in grouped.values():
        fp32_ms = sum(fp32["rows"][name]["ms"] for name in names)
        int8_ms = sum(int8["rows"][name]["ms"] for name in names)
        if not fp32_ms and not int8_ms:
            continue
        primary = _primary(names, by_name, order)
        found.append({"unit": primary, "op_type": by_name[primary].op_type, "rows": names,
                      "macs": sum(by_name[name].macs for name in names), "fp32_ms": fp32_ms, "int8_ms": int8_ms,
                      "ratio": int8_ms / fp32_ms if fp32_ms and int8_ms else None,
                      "int8_precision": by_name[primary].int8_precision})
    return sorted(found, key=lambda unit: -max(unit["fp32_ms"], unit["int8_ms"]))
