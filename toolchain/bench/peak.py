"""Achieved GFLOP/s of a measured model and the share of the cores' peak it reaches.

GFLOP/s = 2 x MACs x batch / latency, for p50, p90 and p99 alike; MACs are read from the FP32 ONNX graph
(toolchain.graph.macs; the INT8 graph does the same arithmetic in other types, so for an INT8 row the same
figure counts integer operations: GOP/s). Each variant is compared with the ceiling of its own arithmetic:
FP32 rows with the float32 peak, INT8 rows with the INT8 peak. The float32 peak is, in this order:

- *measured*: the best large float32 GEMM numpy reaches on the same machine with the same thread count
  (toolchain/agent/gemm_peak.py, run over the bench's own Transport, here or on the target), cached per
  machine in ``<cache>/peak/`` (the machine: hostname, CPU, cores, numpy, the hash of the script and common.py);
- *spec*: the target profile's CPU spec, ``clock_ghz x fp32_flops_per_cycle x threads`` (targets/bluebox2);
- none: "—" (an emulated target: qemu's speed is not the core's, so nothing is measured or claimed there).

The INT8 peak is:

- *measured*: the best onnxruntime integer GEMM on the same machine with ``intra_op_num_threads`` = the
  bench's thread count: one MatMulInteger node (uint8 A x int8 B -> int32, 1024 x 1024, an activation zero
  point, B a pre-packed initializer), i.e. the MLAS QGEMM kernels the INT8 convs run on
  (toolchain/agent/qgemm_peak.py). The host builds the model with the onnx package (``int8_model``); the target
  has onnxruntime and numpy but no onnx, so the model's bytes (about 220: B lives in an external-data file the
  script writes with numpy there) travel in base64 as an argument, beside the program on stdin. Cached like
  the float peak, the key adding the target's onnxruntime version and the model's bytes;
- no spec: the profiles give no integer ops/cycle (a Cortex-A72 is ARMv8.0, without the dot-product
  instructions, and how many integer ops per cycle MLAS's widening-multiply kernel reaches there is not a
  figure of ARM's guide), so where the measurement fails an INT8 row has no peak ("—", and the record says why);
- none on an emulated target, as for the float peak.

The roofline of `toolchain profile` also needs the memory bandwidth: the best numpy copy of 64 MiB
(toolchain/agent/bandwidth.py, one core), measured and cached the same way, else the profile's
``memory_gbps``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from toolchain.errors import BenchmarkError, CommandFailedError
from toolchain.fsutil import atomic_write_json, cache_root
from toolchain.transport import Transport

PEAK_SCRIPT = "gemm_peak.py"
INT8_PEAK_SCRIPT = "qgemm_peak.py"
#: the external-data file of the INT8 peak model's B (written on the target beside the model)
INT8_WEIGHTS = "qgemm_b.bin"
#: opset 13 and IR version 7: any onnxruntime from 1.6 on loads it (the Bluebox pins 1.16)
INT8_OPSET, INT8_IR_VERSION = 13, 7
BANDWIDTH_SCRIPT = "bandwidth.py"
BANDWIDTH_MB = 64
GEMM_SIZE = 1024
GEMM_MIN_TIME_S = 0.5
PEAK_DIR = "peak"
_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_LATENCIES = ("p50", "p90", "p99")


#: which peak a variant's rate is compared with: INT8 rows with the INT8 peak, everything else the float32 one
PEAK_KEYS = {"fp32": "fp32_gflops", "int8": "int8_gops"}


def peak_dtype(variant: str) -> str:
    """The arithmetic of a bench variant: "int8" for the INT8 model, "fp32" for the float one."""
    return "int8" if variant.startswith("int8") else "fp32"


@dataclass(frozen=True)
class Peak:
    """One arithmetic's peak per thread count (float32 GFLOP/s or INT8 GOP/s), and where it comes from."""

    source: str  # "measured" or "spec"
    method: str
    gflops: Mapping[int, float] = field(default_factory=dict)
    dtype: str = "fp32"

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "method": self.method, "dtype": self.dtype,
                PEAK_KEYS[self.dtype]: {str(threads): value for threads, value in sorted(self.gflops.items())}}

    @classmethod
    def from_json(cls, data: Any) -> "Peak | None":
        if not isinstance(data, dict) or data.get("source") not in ("measured", "spec"):
            return None
        dtype = data.get("dtype", "fp32")  # records before the INT8 peak have the float32 one only
        if dtype not in PEAK_KEYS:
            return None
        values = data.get(PEAK_KEYS[dtype]) or {}
        return cls(str(data["source"]), str(data.get("method", "")),
                   {int(threads): float(value) for threads, value in values.items()
                    if str(threads).isdigit() and isinstance(value, (int, float))}, dtype)


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


_MACHINE_FACTS = ("hostname", "arch", "cpu_model", "cores", "numpy")


def machine_key(facts: Mapping[str, Any], script: bytes, also: Sequence[str] = ()) -> str:
    """Which machine a measured peak belongs to (its cache file's name); `also`: more facts that matter."""
    identity = {key: facts.get(key) for key in (*_MACHINE_FACTS, *also)}
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


def _failure(stderr: str) -> str:
    """The last line a failed script printed, its ``ERROR {type, message}`` line (common.print_result) as
    "type: message" (the message's first line), at most 200 characters."""
    last = (stderr.strip().splitlines() or ["no output"])[-1]
    if last.startswith("ERROR "):
        try:
            error = json.loads(last[len("ERROR "):])
            message = (str(error.get("message") or "").strip().splitlines() or [""])[0]
            last = f"{error.get('type', 'error')}: {message}" if message else str(error.get("type", "error"))
        except (ValueError, AttributeError):
            pass
    return last[:200]


def _measured_runs(transport: Transport, python: str, facts: Mapping[str, Any], script: str,
                   arguments: list[str] | Callable[[int], list[str]], threads: Sequence[int], what: str,
                   env: Mapping[str, str] | None, timeout: float | None, cache: Path | None, suffix: str = "",
                   identity: bytes = b"", also: Sequence[str] = ()) -> dict[str, Any]:
    """One target-side measurement script's result per thread count, run over `transport` where the cache of
    that machine (hostname, CPU, cores, numpy, the hash of the script, common.py and `identity`, the facts
    named in `also`) has none yet. `arguments` may depend on the thread count (a callable of it)."""
    from toolchain.remote.agent_package import AGENT_DIR, COMMON, stdin_program

    program = stdin_program(script)
    key = machine_key(facts, (AGENT_DIR / script).read_bytes() + (AGENT_DIR / COMMON).read_bytes() + identity,
                      also)
    path = (cache or cache_root() / PEAK_DIR) / f"{key}{suffix}.json"
    document = _read_cache(path)
    runs = dict(document.get("runs") or {})
    for count in threads:
        if str(count) in runs:
            continue
        variables = {**(env or {}), **{name: str(count) for name in _THREAD_VARIABLES}}
        try:
            argv = arguments(count) if callable(arguments) else arguments
            result = transport.run([python, "-", *argv], stdin=program, env=variables, timeout=timeout,
                                   label=what)
            runs[str(count)] = json.loads(result.stdout.strip().splitlines()[-1])
        except CommandFailedError as failed:
            raise BenchmarkError(f"{what} on {transport.target} failed: {_failure(failed.stderr)}",
                                 "the result was stored; rerun to measure it") from None
        except (ValueError, IndexError):
            raise BenchmarkError(f"{what} on {transport.target} printed no result", "rerun") from None
    try:
        atomic_write_json(path, {"schema": "toolchain.peak/1", "machine": {key: facts.get(key) for key in
                                 (*_MACHINE_FACTS, *also)}, "runs": runs})
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


def int8_model(size: int = GEMM_SIZE) -> bytes:
    """The INT8 peak's model, built and checked with the onnx package here (the target has no onnx):
    Y = MatMulInteger(A uint8 [N, N], B int8 [N, N], a_zero_point = 128), B an initializer whose N x N bytes
    live in the external-data file INT8_WEIGHTS (the target writes it), so the model is a few hundred bytes."""
    import onnx
    from onnx import TensorProto, helper

    weights = TensorProto(name="B", data_type=TensorProto.INT8, dims=[size, size],
                          data_location=TensorProto.EXTERNAL)
    for name, value in (("location", INT8_WEIGHTS), ("offset", "0"), ("length", str(size * size))):
        entry = weights.external_data.add()
        entry.key, entry.value = name, value
    zero_point = helper.make_tensor("a_zero_point", TensorProto.UINT8, [], [128])
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B", "a_zero_point"], ["Y"])], "toolchain-int8-peak",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [size, size])], [weights, zero_point])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", INT8_OPSET)],
                              producer_name="toolchain")
    model.ir_version = INT8_IR_VERSION
    # the checker reads external data from files: check a copy that holds B's (zero) bytes in itself
    inline = onnx.ModelProto()
    inline.CopyFrom(model)
    del inline.graph.initializer[0].external_data[:]
    inline.graph.initializer[0].data_location = TensorProto.DEFAULT
    inline.graph.initializer[0].raw_data = bytes(size * size)
    onnx.checker.check_model(inline, full_check=True)
    return model.SerializeToString()


def measured_int8_peak(transport: Transport, python: str, facts: Mapping[str, Any], threads: Sequence[int],
                       env: Mapping[str, str] | None = None, timeout: float | None = 300.0,
                       cache: Path | None = None) -> Peak:
    """The onnxruntime INT8 GEMM (MatMulInteger) peak of the machine behind `transport`, per thread count
    (intra_op_num_threads = the count; cached per machine and onnxruntime version)."""
    import base64

    model = int8_model(GEMM_SIZE)
    encoded = base64.b64encode(model).decode("ascii")

    def arguments(count: int) -> list[str]:
        return ["--size", str(GEMM_SIZE), "--threads", str(count), "--min-time", f"{GEMM_MIN_TIME_S:g}",
                "--weights", INT8_WEIGHTS, "--model-base64", encoded]

    runs = _measured_runs(transport, python, facts, INT8_PEAK_SCRIPT, arguments, threads,
                          "the INT8 GEMM peak measurement", env, timeout, cache, "-int8", identity=model,
                          also=("onnxruntime",))
    versions = sorted({str(runs[str(count)].get("onnxruntime")) for count in threads})
    method = (f"best onnxruntime {'/'.join(versions)} MatMulInteger uint8 x int8 -> int32 {GEMM_SIZE}x{GEMM_SIZE} "
              f"(2N^3 integer ops; MLAS QGEMM, B pre-packed) over >= {GEMM_MIN_TIME_S:g} s, intra-op threads = "
              f"bench threads, on {facts.get('hostname')} ({facts.get('cpu_model')}); cached per machine")
    return Peak("measured", method, {count: float(runs[str(count)]["best_gops"]) for count in threads}, "int8")


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


def compute_section(macs: int, macs_source: str, peak: Peak | None, note: str | None = None,
                    int8_peak: Peak | None = None, int8_note: str | None = None) -> dict[str, Any]:
    """The bench result's ``compute`` section: MACs, where they come from, the peaks used (or why none).

    ``peak`` is the float32 one (FP32 rows; the roofline), ``int8_peak`` the INT8 one (INT8 rows);
    ``peak_of_variant`` says which each variant is compared with."""
    section: dict[str, Any] = {"macs": macs, "macs_source": macs_source, "peak": peak.to_json() if peak else None,
                               "int8_peak": int8_peak.to_json() if int8_peak else None,
                               "peak_of_variant": {"fp32": "peak", "int8": "int8_peak"}}
    if note:
        section["peak_note"] = note
    if int8_note:
        section["int8_peak_note"] = int8_note
    return section


def variant_peak(compute: Mapping[str, Any], variant: str) -> tuple[Peak | None, str | None]:
    """The peak a variant's rate is compared with, by the record's ``compute`` section, and the note where there
    is none. Records from before the INT8 peak compared every variant with the float32 one: so they still are."""
    if "int8_peak" in compute and peak_dtype(variant) == "int8":
        return Peak.from_json(compute.get("int8_peak")), compute.get("int8_peak_note")
    return Peak.from_json(compute.get("peak")), compute.get("peak_note")


def annotate(document: dict[str, Any], compute: Mapping[str, Any]) -> None:
    """Add ``gflops``, ``pct_of_peak`` (p50/p90/p99) and ``peak_used`` to every measurement of a bench result."""
    for entry in document["results"]:
        peak, note = variant_peak(compute, entry["variant"])
        value = peak.gflops.get(int(entry["threads"])) if peak else None
        entry.update(achieved(int(compute["macs"]), int(entry["batch"]), entry["latency_ms"], value))
        entry["peak_used"] = {"dtype": peak.dtype if peak else peak_dtype(entry["variant"]),
                              "source": peak.source if peak and value else None, "value": value,
                              **({} if peak and value else {"note": note or "no peak at this thread count"})}
