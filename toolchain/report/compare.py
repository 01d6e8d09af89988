"""`toolchain report --compare A B`: two runs or two artifact sets side by side, regressions beyond noise.

A side is a bench record file (one run), an artifact folder (its runs) or an artifact store (the newest
artifact of each model). Measurements are matched by (model, target, variant, threads, batch).

Noise comes from the rounds the store keeps: every bench record of the same artifact, target, variant,
threads and batch is one round, and its p50 one sample. A side's p50 is the median of its rounds; its
noise is the range of those p50s (max - min) when it has two rounds or more, else the spread inside its
one run (p90 - p50). The noise of a comparison is the larger of the two sides'; B is a regression when
its p50 exceeds A's by more than that, an improvement when it is below by more. Top-1 on the same eval
set is deterministic: any drop is flagged.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from toolchain.artifacts import MANIFEST_NAME, read_manifest
from toolchain.errors import UsageError
from toolchain.report.collect import Filters, artifact_entry, collect

COMPARE_SCHEMA = "toolchain.report-compare/1"
RULE = ["a side's p50: the median of its rounds (one round = one stored bench record of that key)",
        "noise: the range of a side's round p50s (two rounds or more), else that run's own p90 - p50; "
        "a comparison's noise is the larger of its two sides'",
        "regression: B's p50 above A's by more than the noise; improvement: below by more; otherwise within noise",
        "top-1 on the same eval set is deterministic: any drop is highlighted",
        "bench again (`toolchain bench`) to add rounds: more rounds, a truer noise band"]


def _side(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """What a path names (bench record / artifact / store) and its report entries."""
    if path.is_file():
        folder = path.parent.parent
        if path.suffix != ".json" or not (folder / MANIFEST_NAME).is_file():
            raise UsageError(f"{path} is not a bench record of an artifact (artifacts/<model>/<id>/bench/*.json)",
                             "pass a bench record, an artifact folder or an artifact store to --compare")
        entry = artifact_entry(folder, record=path)
        return "bench record", [entry] if entry else []
    if (path / MANIFEST_NAME).is_file():
        read_manifest(path)
        entry = artifact_entry(path)
        return "artifact", [entry] if entry else []
    if path.is_dir():
        return "artifact store", collect(path, Filters())["models"]
    raise UsageError(f"--compare: {path} does not exist", "pass two bench records, artifact folders or stores")


def _rounds(entries: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    found: dict[tuple, dict[str, Any]] = {}
    for entry in entries:  # newest artifact of a model first: it wins
        for row in entry["measurements"]:
            if row["source"] != "bench":
                continue
            key = (entry["model"], row["target"], row["variant"], row["threads"], row["batch"])
            found.setdefault(key, row)
    return found


def _noise(row: dict[str, Any]) -> tuple[float, str]:
    samples = row["p50_ms_rounds"]
    if len(samples) >= 2:
        return max(samples) - min(samples), f"{len(samples)} rounds"
    return row["p90_ms"] - row["p50_ms"], "within run (p90 - p50)"


def compare(a: Path, b: Path) -> dict[str, Any]:
    """The comparison document of two sides."""
    (kind_a, entries_a), (kind_b, entries_b) = _side(a), _side(b)
    rounds_a, rounds_b = _rounds(entries_a), _rounds(entries_b)
    if not rounds_a or not rounds_b:
        empty = a if not rounds_a else b
        raise UsageError(f"--compare: {empty} holds no bench record", "bench it first: toolchain bench --artifact DIR")
    rows = []
    for key in sorted(set(rounds_a) | set(rounds_b)):
        left, right = rounds_a.get(key), rounds_b.get(key)
        model, target, variant, threads, batch = key
        row: dict[str, Any] = {"model": model, "target": target, "variant": variant, "threads": threads,
                               "batch": batch, "emulated": bool((left or right or {}).get("emulated")),
                               "a_p50_ms": None, "a_rounds": None, "b_p50_ms": None, "b_rounds": None,
                               "change_ms": None, "change_pct": None, "noise_ms": None, "noise_from": None,
                               "a_top1": left["top1"] if left else None, "b_top1": right["top1"] if right else None,
                               "top1_change": right["top1"] - left["top1"] if left and right else None}
        for name, side in (("a", left), ("b", right)):
            if side:
                row[f"{name}_p50_ms"] = statistics.median(side["p50_ms_rounds"])
                row[f"{name}_rounds"] = len(side["p50_ms_rounds"])
        if left and right:
            (noise_a, from_a), (noise_b, from_b) = _noise(left), _noise(right)
            noise, source = (noise_a, f"A: {from_a}") if noise_a >= noise_b else (noise_b, f"B: {from_b}")
            change = row["b_p50_ms"] - row["a_p50_ms"]
            row.update(change_ms=change, change_pct=100.0 * change / row["a_p50_ms"], noise_ms=noise,
                       noise_from=source, verdict="regression" if change > noise else
                       "improvement" if -change > noise else "within noise")
        else:
            row["verdict"] = "only in A" if left else "only in B"
        rows.append(row)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    side = lambda path, kind, entries: {"path": str(path), "kind": kind, "artifacts": len(entries),  # noqa: E731
                                         "records": len({r["record"] for e in entries for r in e["measurements"]
                                                         if r["source"] == "bench"})}
    return {"schema": COMPARE_SCHEMA, "a": side(a, kind_a, entries_a), "b": side(b, kind_b, entries_b),
            "rows": rows, "counts": counts, "rule": RULE}
