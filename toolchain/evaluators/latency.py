"""Quick latency of an artifact's models on this machine: the benchmark agent's own protocol, run locally.

The export table's latency columns: threads 1, batch 1, 20 warm-up and 200 timed runs per model
(`toolchain bench` runs the full protocol); the numbers come from the same agent that runs on a target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


def quick_latency(models: Mapping[str, Path], evalset: Path) -> dict[str, Any]:
    """p50/mean/... per model (the agent's latency summary), the CPU, and INT8's p50 over FP32's."""
    from toolchain.bench.settings import QUICK_LATENCY as QUICK
    from toolchain.bench.system import measure_files

    document = measure_files(models, evalset, QUICK)
    record: dict[str, Any] = {"threads": QUICK.threads[0], "batch": QUICK.batch, "warmup": QUICK.warmup,
                              "runs": QUICK.runs, "cpu": document["target"]["cpu_model"],
                              "scope": "host quick check with the benchmark agent; `toolchain bench` runs the full "
                                       "protocol"}
    for entry in document["results"]:
        record[entry["variant"]] = entry["latency_ms"]
    if "fp32" in record and "int8" in record:
        record["int8_over_fp32_p50"] = record["int8"]["p50"] / record["fp32"]["p50"]
    return record
