"""Settings of the host pipeline's stages: plain records, checked, hashed into the artifact id.

This module imports neither torch nor onnx: a cached `toolchain export` computes the artifact id
from these records without loading either.
"""

from __future__ import annotations

import math
import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from toolchain.errors import UsageError

DEFAULT_OPSET = 18
EXPORTERS = ("torchscript", "dynamo")
# opset 7 is the oldest onnxruntime loads; 18 the newest both exporters write for these models
OPSET_RANGE = (7, 18)
DEFAULT_ATOL = 1e-4
# Relative part of the parity tolerance, times each eval image's largest |logit|: float32 keeps ~7
# digits, and a deep net whose activations reach 1e9 inside (hps-21 after brief training, with near-dead
# BatchNorm channels) ends with logits of ~1e7 off by ~1e1 after export for rounding alone (measured: 13 at
# 1.3e7, 1e-6 relative); 1e-5 leaves that a tenfold margin while usual logits of ~10 gain only 1e-4.
DEFAULT_RTOL = 1e-5

# the QuantSettings fields the gate pass uses (the quantize pass hashes the others)
GATE_FIELDS = frozenset({"max_drop", "max_kept_float"})

METHODS = ("auto", "minmax", "entropy", "percentile")
# --method auto: the calibrations the gate tries, cheapest first (minmax ~1 s, percentile a histogram,
# entropy a KL search per tensor), until one meets the gate with every node INT8
AUTO_METHODS = ("minmax", "percentile", "entropy")
# ... then percentile at these lower percentiles, which clip more of the tail: a deep net's activations can be
# so heavy-tailed that 99.999 still follows the rare spikes (measured on hps-21-1x-v3 after the quick
# training: INT8 52.2 % at 99.99 and 66.2 % at 99.9 against 67.4 % FP32, 36.6 % at 99.999, 25.6 % minmax)
AUTO_TAIL_PERCENTILES = (99.99, 99.9)
FORMATS = ("qdq", "qoperator")
ACTIVATION_TYPES = ("uint8", "int8")
DEFAULT_MAX_DROP = 1.0
# Measured on the development host (AMD EPYC with AVX-512 VNNI, 2 cores, onnxruntime 1.32), hps-06-0.5x
# trained on Fashion-MNIST, 1 thread, batch 1, median of 5 x 2,000 runs; the same top-1 for every flavour
# with per-channel weights. benchmarks/bench_pipeline.py measures them again on every `just bench`.
DEFAULTS_REASON = ("qoperator + uint8 activations (U8S8) + per-channel int8 weights + minmax: the fastest "
                   "INT8 flavour measured on the x86 host, 0.248 ms/image vs 0.267 (qdq U8S8), 0.331 (qdq S8S8) "
                   "and 0.81 (qoperator S8S8), at equal top-1; FP32 was faster still (0.157 ms) for this small "
                   "model, so INT8 buys size here, not speed. Measure the target: a Cortex-A72 has no "
                   "dot-product instructions, and onnxruntime before 1.10 lacks QOperator's QGemm "
                   "(use --format qdq there). On an x86 host without VNNI the U8S8 kernels saturate, so there "
                   "the weights default to 7 bits (--reduce-range), as onnxruntime's quantization guide prescribes")

# x86 CPUs with these flags multiply-add u8 x s8 pairs straight into int32 (VPDPBUSD)
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


def u8s8_saturation_reason(cpuinfo: Path = Path("/proc/cpuinfo"), machine: str | None = None) -> str | None:
    """Why onnxruntime's U8S8 kernels on this host may saturate, or None where they compute exactly.

    On x86 without VNNI (AVX2, AVX-512 without VNNI) MLAS multiplies u8 activations by s8 weights with
    VPMADDUBSW, which adds each pair of products into a saturating int16: two 255 x 127 products
    overflow it. onnxruntime's quantization guide prescribes --reduce-range (7-bit weights) there.
    Measured on an AVX2-only EPYC: hps-06-0.5x INT8 agreed with FP32 on 88.8 % of the eval images
    as quantized, on 98.6 % with 7-bit weights. ARM (the Bluebox) widens to int32 and is exact.
    """
    machine = (machine or platform.machine()).lower()
    if machine not in X86_MACHINES:
        return None
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return "this x86 CPU's flags cannot be read (no /proc/cpuinfo): it may lack VNNI"
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    if flags & VNNI_FLAGS:
        return None
    return ("this x86 CPU has no VNNI: onnxruntime's U8S8 kernels add pairs of u8 x s8 products in a "
            "saturating int16 here, so INT8 accuracy measured on this host would be wrong")


def check_rtol(rtol: float) -> None:
    """A usage error unless --rtol is a finite number >= 0."""
    if not (math.isfinite(rtol) and rtol >= 0):
        raise UsageError(f"--rtol must be a number >= 0, got {rtol}", "pass e.g. --rtol 1e-6 (0: absolute only)")


@dataclass(frozen=True)
class ExportSettings:
    """torch -> ONNX: opset, exporter, parity tolerance, whether onnxsim runs."""

    opset: int = DEFAULT_OPSET
    exporter: str = "torchscript"
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    simplify: bool = True

    def validate(self) -> None:
        """Fail with a usage error naming the option if a setting cannot work."""
        if self.exporter not in EXPORTERS:
            raise UsageError(f"unknown --exporter {self.exporter!r}", f"use one of: {', '.join(EXPORTERS)}")
        low, high = OPSET_RANGE
        if not low <= self.opset <= high:
            raise UsageError(f"--opset {self.opset} is outside {low}..{high}",
                             f"pass an opset from {low} to {high} (the target's onnxruntime decides which)")
        if not (math.isfinite(self.atol) and self.atol > 0):
            raise UsageError(f"--atol must be a positive number, got {self.atol}", "pass e.g. --atol 1e-4")
        check_rtol(self.rtol)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class QuantSettings:
    """Static INT8 quantization and its accuracy gate."""

    method: str = "auto"  # auto: the gate tries AUTO_METHODS in order; a method name pins one
    format: str = "qoperator"
    per_channel: bool = True
    # False: --method auto may also try the other format and per-tensor weights (on the best calibration's
    # ranges) when no calibration passes; --format / --per-channel / --per-tensor pin them
    layout_pinned: bool = False
    activation_type: str = "uint8"
    reduce_range: bool | None = None  # None: on where this host's U8S8 kernels saturate (see resolved())
    exclude_nodes: tuple[str, ...] = ()
    max_drop: float = DEFAULT_MAX_DROP
    max_kept_float: int | None = None  # None: half of the quantizable nodes
    percentile: float = 99.999  # --method percentile
    percentile_bins: int = 2048  # histogram bins of --method percentile
    # --method entropy: ORT's default of 128 bins reproduces minmax's ranges here; 256 bins differ and
    # take ~2.5 s for hps-06-0.5x (the KL search grows with the square of the bins: 1,024 took 14 s)
    entropy_bins: int = 256

    def validate(self) -> None:
        """Fail with a usage error naming the option if a setting is not one we know."""
        for value, allowed, option in ((self.method, METHODS, "--method"), (self.format, FORMATS, "--format"),
                                       (self.activation_type, ACTIVATION_TYPES, "--activation-type")):
            if value not in allowed:
                raise UsageError(f"unknown {option} {value!r}", f"use one of: {', '.join(allowed)}")
        if not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise UsageError(f"--max-drop must be >= 0 percentage points, got {self.max_drop}",
                             "pass e.g. --max-drop 1.0")
        if not 0 < self.percentile <= 100:
            raise UsageError(f"--percentile must be in (0, 100], got {self.percentile}", "pass e.g. 99.999")
        if self.max_kept_float is not None and self.max_kept_float < 0:
            raise UsageError("--max-kept-float must be >= 0", "pass e.g. --max-kept-float 4")
        if min(self.entropy_bins, self.percentile_bins) < 128:
            raise UsageError("histogram bins must be at least 128", "keep the defaults")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["exclude_nodes"] = list(self.exclude_nodes)
        return data

    @property
    def calibration_methods(self) -> tuple[str, ...]:
        """The calibration methods to try, in order: AUTO_METHODS for auto, else the one pinned."""
        return AUTO_METHODS if self.method == "auto" else (self.method,)

    def calibration_attempts(self) -> tuple["QuantSettings", ...]:
        """Every calibration to try, in order, as concrete settings: for auto each of AUTO_METHODS (percentile
        at ``percentile``), then percentile at each of AUTO_TAIL_PERCENTILES below it; else the one pinned."""
        if self.method != "auto":
            return (self,)
        tails = [replace(self, method="percentile", percentile=value) for value in AUTO_TAIL_PERCENTILES
                 if value < self.percentile]
        return tuple(self.with_method(method) for method in AUTO_METHODS) + tuple(tails)

    @property
    def calibration_label(self) -> str:
        """The calibration in words: "minmax", "entropy", "percentile 99.9"."""
        return f"percentile {self.percentile:g}" if self.method == "percentile" else self.method

    def layout_alternatives(self) -> list["QuantSettings"]:
        """The other weight layouts --method auto tries when no calibration passes: the other format, then
        the other weight granularity (none when the layout is pinned; only the auto search asks for them)."""
        if self.layout_pinned:
            return []
        other = "qdq" if self.format == "qoperator" else "qoperator"
        return [replace(self, format=other), replace(self, per_channel=not self.per_channel)]

    def with_method(self, method: str | None = None) -> "QuantSettings":
        """These settings with a concrete calibration method (default: the first to try)."""
        return replace(self, method=method or self.calibration_methods[0])

    def resolved(self) -> tuple[QuantSettings, str | None]:
        """These settings with reduce_range decided, and why where it was decided for this host.

        Left unset (None), 7-bit weights are used only for U8S8 on a host whose kernels saturate: the
        accuracy gate judges INT8 with this host's kernels, so they must compute what the target will.
        """
        if self.reduce_range is not None:
            return self, None
        if self.activation_type != "uint8":
            return replace(self, reduce_range=False), None
        reason = u8s8_saturation_reason()
        return replace(self, reduce_range=reason is not None), reason


@dataclass(frozen=True)
class QatSettings:
    """How long and how hard the fine-tune may run (it stops after the epoch that crosses ``minutes``)."""

    epochs: int = 2
    images: int = 10_000  # training images per epoch (a seeded sample of the train split)
    minutes: float = 15.0
    # Adam's step: 1e-4 cost the test net 20 pp in float on an ill-conditioned copy, 1e-5 gained 2 (measured with
    # moving-average ranges, before they were calibrated and frozen)
    lr: float = 1e-5
    batch_size: int = 32
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 1 or self.images < 1 or self.batch_size < 1:
            raise UsageError("--qat-epochs and --qat-images must be at least 1", "pass e.g. --qat-epochs 2")
        if not (math.isfinite(self.minutes) and self.minutes > 0) or not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError("--qat-minutes and the QAT learning rate must be positive", "pass e.g. --qat-minutes 15")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
