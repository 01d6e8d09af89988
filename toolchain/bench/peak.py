"""Achieved GFLOP/s of a measured model and the share of the cores' peak it reaches.

GFLOP/s = 2 x MACs x batch / latency, for p50, p90 and p99 alike; MACs are read from the FP32 ONNX graph
(toolchain.graph.macs; the INT8 graph does the same arithmetic in other types). The peak is, in this order:

- *measured*: the best large float32 GEMM numpy reaches on the same machine with the same thread count
  (toolchain/agent/gemm_peak.py, run over the bench's own Transport, here or on the target), cached per
  machine in ``<cache>/peak/`` (the machine: hostname, CPU, cores, numpy, the hash of the script and common.py);
- *spec*: the target profile's CPU spec, ``clock_ghz x fp32_flops_per_cycle x threads`` (targets/bluebox2);
- none: "—" (an emulated target: qemu's speed is not the core's, so nothing is measured or claimed there).

INT8 rows are compared with the same float32 peak: the only ceiling measured here (numpy has no integer
GEMM kernel worth the name, so an INT8 peak is not claimed).

The roofline of `toolchain profile` also needs the memory bandwidth: the best numpy copy of 64 MiB
(toolchain/agent/bandwidth.py, one core), measured and cached the same way, else the profile's
``memory_gbps``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from toolchain.errors import BenchmarkError, CommandFailedError
from toolchain.fsutil import atomic_write_json, cache_root
from toolchain.transport import Transport

PEAK_SCRIPT = "gemm_peak.py"
BANDWIDTH_SCRIPT = "bandwidth.py"
BANDWIDTH_MB = 64
GEMM_SIZE = 1024
GEMM_MIN_TIME_S = 0.5
PEAK_DIR = "peak"
_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_LATENCIES = ("p50", "p90", "p99")


@dataclass(frozen=True)
class Peak:
    """The float32 peak per thread count, and where it comes from (measured / spec)."""

    source: str  # "measured" or "spec"
    method: str
    gflops: Mapping[int, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "method": self.method,
                "fp32_gflops": {str(threads): value for threads, value in sorted(self.gflops.items())}}

    @classmethod
    def from_json(cls, data: Any) -> "Peak | None":
        if not isinstance(data, dict) or data.get("source") not in ("measured", "spec"):
            return None
        values = data.get("fp32_gflops") or {}
        return cls(str(data["source"]), str(data.get("method", "")),
                   {int(threads): float(value) for threads, value in values.items()
                    if str(threads).isdigit() and isinstance(value, (int, float))})


def achieved(macs: int, batch: int, latency_ms: Mapping[str, float], peak: float | None) -> dict[str, Any]:
    """GFLOP/s at p50/p90/p99 and the % of `peak` each is (None without a peak)."""
    gflops = {key: 2.0 * macs * batch / (latency_ms[key] / 1e3) / 1e9 for key in _LATENCIES if latency_ms.get(key)}
    percent = {key: 100.0 * value / peak for key, value in gflops.items()} if peak else None
    return {"gflops": gflops, "pct_of_peak": percent}


def spec_peak(cpu: str | None, clock_ghz: float | None, flops_per_cycle: int | None, profile: str,
              threads: Sequence[int]) -> Peak | None:
    """The profile's CPU spec as a peak per thread count (None when the profile has no spec)."""
    if not clock_ghz or not flops_per_cycle:
        return None
    method = (f"target profile {profile}: {cpu or 'CPU'} {clock_ghz:g} GHz x {flops_per_cycle} float32 "
              "FLOPs/cycle x threads")
    return Peak("spec", method, {count: clock_ghz * flops_per_cycle * count for count in threads})


def machine_key(facts: Mapping[str, Any], script: bytes) -> str:
    """Which machine a measured peak belongs to (its cache file's name)."""
    identity = {key: facts.get(key) for key in ("hostname", "arch", "cpu_model", "cores", "numpy")}
    identity["script"] = hashlib.sha256(script).hexdigest()
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # a damaged cache entry is measured again and rewritten
    return document if isinstance(document, dict) else {}


def _measured_runs(transport: Transport, python: str, facts: Mapping[str, Any], script: str, arguments: list[str],
                   threads: Sequence[int], what: str, env: Mapping[str, str] | None, timeout: float | None,
                   cache: Path | None, suffix: str = "") -> dict[str, Any]:
    """One target-side measurement script's result per thread count, run over `transport` where the cache of
    that machine (hostname, CPU, cores, numpy, the hash of the script and common.py) has none yet."""
    from toolchain.remote.agent_package import AGENT_DIR, COMMON, stdin_program

    program = stdin_program(script)
    key = machine_key(facts, (AGENT_DIR / script).read_bytes() + (AGENT_DIR / COMMON).read_bytes())
    path = (cache or cache_root() / PEAK_DIR) / f"{key}{suffix}.json"
    document = _read_cache(path)
    runs = dict(document.get("runs") or {})
    for count in threads:
        if str(count) in runs:
            continue
        variables = {**(env or {}), **{name: str(count) for name in _THREAD_VARIABLES}}
        try:
            result = transport.run([python, "-", *arguments], stdin=program, env=variables, timeout=timeout,
                                   label=what)
            runs[str(count)] = json.loads(result.stdout.strip().splitlines()[-1])
        except CommandFailedError as failed:
            raise BenchmarkError(f"{what} on {transport.target} failed: "
                                 f"{(failed.stderr.strip().splitlines() or ['no output'])[-1][:200]}",
                                 "the result was stored; rerun to measure it") from None
        except (ValueError, IndexError):
            raise BenchmarkError(f"{what} on {transport.target} printed no result", "rerun") from None
    try:
        atomic_write_json(path, {"schema": "toolchain.peak/1", "machine": {key: facts.get(key) for key in
                                 ("hostname", "arch", "cpu_model", "cores", "numpy")}, "runs": runs})
    except OSError:
        pass  # an unwritable cache costs a measurement next time, nothing else
    return runs


def measured_peak(transport: Transport, python: str, facts: Mapping[str, Any], threads: Sequence[int],
                  env: Mapping[str, str] | None = None, timeout: float | None = 300.0,
                  cache: Path | None = None) -> Peak:
    """The numpy float32 GEMM peak of the machine behind `transport`, per thread count (cached per machine)."""
    runs = _measured_runs(transport, python, facts, PEAK_SCRIPT,
                          ["--size", str(GEMM_SIZE), "--min-time", f"{GEMM_MIN_TIME_S:g}"], threads,
                          "the GEMM peak measurement", env, timeout, cache)
    method = (f"best numpy float32 GEMM {GEMM_SIZE}x{GEMM_SIZE} (2N^3 FLOPs) over >= {GEMM_MIN_TIME_S:g} s, "
              f"BLAS threads = bench threads, on {facts.get('hostname')} ({facts.get('cpu_model')}); cached per machine")
    return Peak("measured", method, {count: float(runs[str(count)]["best_gflops"]) for count in threads})


@dataclass(frozen=True)
class Bandwidth:
    """The memory bandwidth a roofline's sloped ceiling is drawn with, and where it comes from (measured / spec)."""

    source: str
    method: str
    gbps: float

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "method": self.method, "gbps": self.gbps}


def measured_bandwidth(transport: Transport, python: str, facts: Mapping[str, Any],
                       env: Mapping[str, str] | None = None, timeout: float | None = 300.0,
                       cache: Path | None = None) -> Bandwidth:
    """The streaming copy bandwidth of the machine behind `transport`, one core (cached per machine)."""
    runs = _measured_runs(transport, python, facts, BANDWIDTH_SCRIPT,
                          ["--megabytes", str(BANDWIDTH_MB), "--min-time", f"{GEMM_MIN_TIME_S:g}"], (1,),
                          "the memory bandwidth measurement", env, timeout, cache, "-bandwidth")
    method = (f"best numpy copy of {BANDWIDTH_MB} MiB float32 (2 x the bytes, STREAM's copy) over >= "
              f"{GEMM_MIN_TIME_S:g} s, one core, on {facts.get('hostname')} ({facts.get('cpu_model')}); "
              "cached per machine")
    return Bandwidth("measured", method, float(runs["1"]["best_gbps"]))


def spec_bandwidth(gbps: float | None, profile: str) -> Bandwidth | None:
    """The target profile's memory bandwidth spec (None when the profile has none)."""
    if not gbps:
        return None
    return Bandwidth("spec", f"target profile {profile}: memory_gbps = {gbps:g} (the memory system's peak)", gbps)


def compute_section(macs: int, macs_source: str, peak: Peak | None, note: str | None = None) -> dict[str, Any]:
    """The bench result's ``compute`` section: MACs, where they come from, the peak used (or why none)."""
    section: dict[str, Any] = {"macs": macs, "macs_source": macs_source, "peak": peak.to_json() if peak else None}
    if note:
        section["peak_note"] = note
    return section


def annotate(document: dict[str, Any], compute: Mapping[str, Any]) -> None:
    """Add ``gflops`` and ``pct_of_peak`` (p50/p90/p99) to every measurement of a bench result."""
    peak = Peak.from_json(compute.get("peak"))
    for entry in document["results"]:
        value = peak.gflops.get(int(entry["threads"])) if peak else None
        entry.update(achieved(int(compute["macs"]), int(entry["batch"]), entry["latency_ms"], value))
