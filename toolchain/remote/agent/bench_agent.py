"""Transitional, to be deleted when toolchain.pipeline.quick_latency calls toolchain.bench.system.measure_files.

The pipeline still imports `batches_of, cpu_model, latency_summary, timed_runs` from here; they are the
target-side agent's (toolchain/agent/), loaded by path without putting that folder on sys.path.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from toolchain.remote.agent_package import AGENT_DIR, BENCH_AGENT, COMMON


def _load(name: str, filename: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, AGENT_DIR / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_agent() -> tuple[ModuleType, ModuleType]:
    # the agent does `import common`: lend it that name only while it is being loaded
    saved = sys.modules.get("common")
    sys.modules["common"] = common = _load("toolchain_agent_common", COMMON)
    try:
        return common, _load("toolchain_agent_bench", BENCH_AGENT)
    finally:
        if saved is None:
            del sys.modules["common"]
        else:
            sys.modules["common"] = saved


_common, _agent = _load_agent()
cpu_model = _common.cpu_model
batches_of, latency_summary, timed_runs = _agent.batches_of, _agent.latency_summary, _agent.timed_runs
