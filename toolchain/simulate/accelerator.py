"""The reference accelerator of the SqueezeNext paper (Gholami et al. 2018, Section 3, Fig. 5) as parameters.

From the paper: a 16x16 or 8x8 PE array of 16-bit integer MACs with local register files, a 128 KB or
32 KB global buffer, a DMA controller to DRAM with 100 cycles latency and 16 GB/s effective bandwidth,
weight-stationary and output-stationary (SOC-MOP) dataflows, 40 % weight sparsity exploited in OS mode,
energy with Eyeriss-style normalised costs. What the paper does not give (clock, buffer ports, Eyeriss'
own cost values) is ours, named here and in docs/simulate.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from toolchain.errors import UsageError

WORD_BYTES = 2  # 16-bit activations and weights


@dataclass(frozen=True)
class EnergyCosts:
    """Energy per 16-bit access, normalised to one MAC (Eyeriss, Chen et al. 2017: RF 1, array 2, buffer 6, DRAM 200)."""

    mac: float = 1.0
    register_file: float = 1.0
    array: float = 2.0  # a transfer between PEs, or a broadcast over the array's bus
    buffer: float = 6.0
    dram: float = 200.0


@dataclass(frozen=True)
class Accelerator:
    """One configuration of the paper's accelerator."""

    rows: int = 16
    cols: int = 16
    buffer_bytes: int = 128 * 1024
    # Ours: the paper gives no clock; 16 GB/s is then 16 bytes a cycle (docs/simulate.md: sensitivity)
    clock_mhz: float = 1000.0
    dram_latency_cycles: int = 100
    dram_gb_per_s: float = 16.0
    weight_sparsity: float = 0.4
    energy: EnergyCosts = field(default_factory=EnergyCosts)

    @property
    def pes(self) -> int:
        return self.rows * self.cols

    @property
    def dram_bytes_per_cycle(self) -> float:
        return self.dram_gb_per_s * 1e9 / (self.clock_mhz * 1e6)

    @property
    def buffer_read_words(self) -> int:
        """Words the global buffer delivers to the array a cycle. Ours: one port along each edge of the array."""
        return self.rows + self.cols

    @property
    def buffer_write_words(self) -> int:
        """Words the array writes back a cycle. Ours: one per column."""
        return self.cols

    @property
    def tile_budget_bytes(self) -> int:
        """Buffer space one DRAM tile may use. Ours: half the buffer, so the next tile loads while one computes."""
        return self.buffer_bytes // 2

    @property
    def label(self) -> str:
        return f"{self.rows}x{self.cols}, {format_bytes(self.buffer_bytes)}"

    def describe(self) -> dict[str, object]:
        """The configuration as a JSON-ready record."""
        return {"array": f"{self.rows}x{self.cols}", "buffer_bytes": self.buffer_bytes,
                "clock_mhz": self.clock_mhz, "dram_latency_cycles": self.dram_latency_cycles,
                "dram_gb_per_s": self.dram_gb_per_s, "dram_bytes_per_cycle": self.dram_bytes_per_cycle,
                "weight_sparsity_os": self.weight_sparsity, "word_bytes": WORD_BYTES,
                "buffer_read_words_per_cycle": self.buffer_read_words,
                "buffer_write_words_per_cycle": self.buffer_write_words,
                "energy_costs": vars(self.energy)}


# The paper's two configurations (Table 3's column groups)
SMALL = Accelerator(rows=8, cols=8, buffer_bytes=32 * 1024)
LARGE = Accelerator(rows=16, cols=16, buffer_bytes=128 * 1024)

_ARRAY_RE = re.compile(r"^\s*(\d{1,4})\s*[xX]\s*(\d{1,4})\s*$")
_BUFFER_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)(i?[bB])?\s*$")
MAX_PES_SIDE = 256


def parse_array(text: str) -> tuple[int, int]:
    """'16x16' -> (16, 16); anything else is a usage error."""
    match = _ARRAY_RE.match(text)
    if not match or not all(1 <= int(side) <= MAX_PES_SIDE for side in match.groups()):
        raise UsageError(f"--array {text!r} is not ROWSxCOLS", f"use 8x8 or 16x16 (the paper's), "
                         f"or any RxC with sides 1..{MAX_PES_SIDE}")
    return int(match.group(1)), int(match.group(2))


def parse_buffer(text: str) -> int:
    """'128K' / '128KB' / '1M' / '65536' -> bytes (K = 1024); anything else is a usage error."""
    match = _BUFFER_RE.match(text)
    hint = "use 32K or 128K (the paper's), or a size like 64K, 1M, 65536"
    if not match:
        raise UsageError(f"--buffer {text!r} is not a size", hint)
    size = float(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    if size < 1024 or size > 1024 ** 3 or size != int(size):
        raise UsageError(f"--buffer {text!r} is out of range (1K to 1G bytes)", hint)
    return int(size)


def format_bytes(size: int) -> str:
    """131072 -> '128KB', 1048576 -> '1MB', other sizes in bytes."""
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


def accelerator(array: str = "16x16", buffer: str = "128K", clock_mhz: float | None = None) -> Accelerator:
    """An accelerator from the command line's --array and --buffer (and an optional clock)."""
    rows, cols = parse_array(array)
    chosen = replace(LARGE, rows=rows, cols=cols, buffer_bytes=parse_buffer(buffer))
    if clock_mhz is not None:
        if not 1 <= clock_mhz <= 10000:
            raise UsageError(f"--clock-mhz {clock_mhz:g} is out of range", "use a clock between 1 and 10000 MHz")
        chosen = replace(chosen, clock_mhz=clock_mhz)
    return chosen
