"""Cycles and energy of each layer on the paper's accelerator: PE-array dataflows, global-buffer tiling, DMA.

The model, per layer (docs/simulate.md derives each term):

* weight stationary (WS): the array holds a rows x cols block of one kernel tap's weights (rows: input
  channels, cols: output channels) and streams one input pixel a cycle through it. A pass costs
  ``pixels + ceil(rows*cols / buffer_read_words) + rows`` cycles (stream, weight load, the partial sums'
  way down the rows); there are ``taps * ceil(C_in/rows) * ceil(C_out/cols)`` passes per DRAM row tile.
  Grouped convolutions pack whole groups block-diagonally when they fit.
* output stationary, single output channel - multiple output pixels (OS, SOC-MOP): the array computes a
  rows x cols block of one output channel; one weight is broadcast a cycle and zero weights are skipped
  (the paper's 40 % sparsity). Per block and input channel the buffer must deliver the input patch
  (double-buffered, so the block takes the longer of compute and delivery), then the block drains.
* DMA: the layer is tiled over output channels, input channels and output rows so that one tile fits
  half the global buffer; the order and sizes are chosen for the fewest cycles, then the fewest DRAM
  bytes. Every transfer pays the DRAM latency; bytes move at the DRAM bandwidth; DMA overlaps compute
  except for the first tile's load and the last tile's store:
  ``cycles = exposed + max(compute, dma - exposed)``.
* the per-layer dataflow is the faster one ("best", as the paper's accelerator), or the one asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from toolchain.errors import UsageError
from toolchain.simulate.accelerator import WORD_BYTES, Accelerator
from toolchain.simulate.layers import ConvLayer

WS, OS, BEST = "ws", "os", "best"
DATAFLOWS = (BEST, WS, OS)


@dataclass(frozen=True)
class Energy:
    """Energy of one layer by component, in units of one 16-bit MAC."""

    mac: float = 0.0
    register_file: float = 0.0
    array: float = 0.0
    buffer: float = 0.0
    dram: float = 0.0

    @property
    def total(self) -> float:
        return self.mac + self.register_file + self.array + self.buffer + self.dram

    def __add__(self, other: "Energy") -> "Energy":
        return Energy(self.mac + other.mac, self.register_file + other.register_file, self.array + other.array,
                      self.buffer + other.buffer, self.dram + other.dram)


@dataclass(frozen=True)
class Tiling:
    """How a layer is cut into DRAM tiles that fit the buffer, and what moving them costs."""

    out_channels: int
    in_channels: int
    rows: int
    order: str  # "channels-outer": inputs re-read per channel tile; "rows-outer": weights re-read per row tile
    tiles: int
    dram_bytes: int
    transfers: int
    dma_cycles: int
    exposed_cycles: int  # the first tile's load and the last one's store, part of dma_cycles that no work hides


@dataclass(frozen=True)
class LayerCost:
    """Simulated cost of one layer."""

    layer: ConvLayer
    dataflow: str
    cycles: int
    compute_cycles: int
    tiling: Tiling
    energy: Energy
    alternatives: tuple[tuple[str, int], ...]  # (dataflow, cycles) of every dataflow that fits

    @property
    def macs_per_cycle(self) -> float:
        return self.layer.macs / self.cycles if self.cycles else 0.0

    @property
    def bound(self) -> str:
        """'compute' or 'memory': which of the array and the DMA sets the layer's time."""
        return "memory" if self.tiling.dma_cycles > self.compute_cycles else "compute"


def _ceil(a: float, b: float) -> int:
    return math.ceil(a / b)


def _splits(n: int) -> list[int]:
    """Tile sizes to try for a dimension of n: n, n/2, n/4, ... 1 (rounded up)."""
    sizes = {n}
    parts = 2
    while parts < 2 * n:
        sizes.add(_ceil(n, parts))
        parts *= 2
    return sorted(sizes, reverse=True)


# --- the PE array -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _WsMapping:
    passes: int
    c_passes: int
    k_passes: int


def _ws_mapping(layer: ConvLayer, acc: Accelerator) -> _WsMapping:
    cig, cog = layer.in_channels // layer.groups, layer.out_channels // layer.groups
    taps = layer.kernel[0] * layer.kernel[1]
    if layer.groups > 1 and cig <= acc.rows and cog <= acc.cols:
        pack = min(acc.rows // cig, acc.cols // cog)  # whole groups side by side on the array's diagonal
        return _WsMapping(passes=taps * _ceil(layer.groups, pack), c_passes=1, k_passes=1)
    c_passes, k_passes = _ceil(cig, acc.rows), _ceil(cog, acc.cols)
    return _WsMapping(passes=taps * layer.groups * c_passes * k_passes, c_passes=c_passes, k_passes=k_passes)


def ws_compute_cycles(layer: ConvLayer, acc: Accelerator, row_tiles: int = 1) -> int:
    """Array cycles of the layer in weight-stationary mode, cut into `row_tiles` DRAM row tiles."""
    mapping = _ws_mapping(layer, acc)
    overhead = _ceil(acc.rows * acc.cols, acc.buffer_read_words) + acc.rows
    pixels = layer.out_size[0] * layer.out_size[1]
    return mapping.passes * pixels + row_tiles * mapping.passes * overhead


def _ws_energy(layer: ConvLayer, acc: Accelerator, row_tiles: int) -> Energy:
    mapping = _ws_mapping(layer, acc)
    cost, macs = acc.energy, layer.macs
    pixels_taps = layer.out_size[0] * layer.out_size[1] * layer.kernel[0] * layer.kernel[1]
    weight_loads = layer.weights * row_tiles
    buffer_accesses = (pixels_taps * layer.in_channels * mapping.k_passes  # input vectors
                       + 2 * pixels_taps * layer.out_channels * mapping.c_passes  # partial sums out and back
                       + weight_loads)
    return Energy(mac=macs * cost.mac, register_file=(macs + weight_loads) * cost.register_file,
                  array=2 * macs * cost.array, buffer=buffer_accesses * cost.buffer)


def _os_blocks(layer: ConvLayer, acc: Accelerator) -> list[tuple[int, int, int]]:
    """(rows, cols, count) of the output blocks one output channel is cut into: full ones and the edges."""
    height, width = layer.out_size
    row_kinds = [(acc.rows, height // acc.rows), (height % acc.rows, 1 if height % acc.rows else 0)]
    col_kinds = [(acc.cols, width // acc.cols), (width % acc.cols, 1 if width % acc.cols else 0)]
    return [(r, c, nr * nc) for r, nr in row_kinds for c, nc in col_kinds if nr * nc]


def _os_patch(layer: ConvLayer, rows: int, cols: int) -> int:
    return ((rows - 1) * layer.stride[0] + layer.kernel[0]) * ((cols - 1) * layer.stride[1] + layer.kernel[1])


def os_compute_cycles(layer: ConvLayer, acc: Accelerator) -> int:
    """Array cycles of the layer in output-stationary SOC-MOP mode, zero weights skipped."""
    cig = layer.in_channels // layer.groups
    nonzero = _ceil((1 - acc.weight_sparsity) * layer.weights_per_output, 1)
    per_channel = 0
    for rows, cols, count in _os_blocks(layer, acc):
        delivery = cig * _ceil(_os_patch(layer, rows, cols), acc.buffer_read_words)
        drain = _ceil(rows * cols, acc.buffer_write_words)
        per_channel += count * (max(delivery, nonzero) + drain)
    return layer.out_channels * per_channel


def _os_energy(layer: ConvLayer, acc: Accelerator) -> Energy:
    cost = acc.energy
    cig = layer.in_channels // layer.groups
    effective = (1 - acc.weight_sparsity) * layer.macs
    blocks = sum(count for _, _, count in _os_blocks(layer, acc))
    patches = layer.out_channels * cig * sum(count * _os_patch(layer, r, c) for r, c, count in _os_blocks(layer, acc))
    weight_reads = layer.out_channels * blocks * (1 - acc.weight_sparsity) * layer.weights_per_output
    return Energy(mac=effective * cost.mac,
                  register_file=(3 * effective + patches) * cost.register_file,  # input, partial sum in and out
                  array=effective * cost.array,  # the broadcast weight
                  buffer=(patches + weight_reads + layer.outputs) * cost.buffer)


# --- the global buffer and DMA ----------------------------------------------------------------


def _row_candidates(layer: ConvLayer, acc: Accelerator, dataflow: str) -> list[int]:
    height = layer.out_size[0]
    if dataflow == WS:
        return _splits(height)
    # OS tiles rows in whole blocks of the array, so DRAM tiling adds no array work
    blocks = _ceil(height, acc.rows)
    return sorted({min(height, acc.rows * size) for size in _splits(blocks)}, reverse=True)


def _input_channels_for(layer: ConvLayer, out_channels: int) -> int:
    if layer.groups == 1:
        return layer.in_channels
    cog, cig = layer.out_channels // layer.groups, layer.in_channels // layer.groups
    return min(layer.in_channels, _ceil(out_channels, cog) * cig)


def _tilings(layer: ConvLayer, acc: Accelerator, rows_choices: list[int]):  # type: ignore[no-untyped-def]
    """Every tiling that fits the tile budget: (Tiling, DRAM row tiles)."""
    in_h, in_w = layer.in_size
    out_w = layer.out_size[1]
    kernel_h, stride_h = layer.kernel[0], layer.stride[0]
    cig = layer.in_channels // layer.groups
    taps = layer.kernel[0] * layer.kernel[1]
    weight_bytes, output_bytes = layer.weights * WORD_BYTES, layer.outputs * WORD_BYTES
    bandwidth, latency = acc.dram_bytes_per_cycle, acc.dram_latency_cycles
    reread = "k" if layer.groups == 1 else "once"  # grouped: each channel tile reads its own inputs
    for rows in rows_choices:
        rows_in = min(in_h, (rows - 1) * stride_h + kernel_h)
        row_tiles = _ceil(layer.out_size[0], rows)
        input_sweep = row_tiles * rows_in * in_w * layer.in_channels * WORD_BYTES
        for k_tile in _splits(layer.out_channels):
            k_tiles = _ceil(layer.out_channels, k_tile)
            needed = _input_channels_for(layer, k_tile)
            out_tile = k_tile * rows * out_w * WORD_BYTES
            for c_tile in _splits(needed):
                in_tile = c_tile * rows_in * in_w * WORD_BYTES
                w_tile = k_tile * min(cig, c_tile) * taps * WORD_BYTES
                if in_tile + w_tile + out_tile > acc.tile_budget_bytes:
                    continue
                c_tiles = _ceil(needed, c_tile)
                inputs_again = k_tiles if reread == "k" else 1
                orders = (
                    ("channels-outer", 1 if c_tiles == 1 else row_tiles,
                     1 if (row_tiles == 1 and c_tiles == 1) else inputs_again),
                    ("rows-outer", 1 if (k_tiles == 1 and c_tiles == 1) else row_tiles,
                     1 if c_tiles == 1 else inputs_again))
                transfers = k_tiles * row_tiles * (2 * c_tiles + 1)
                # the first tile's input and weights arrive before any work, the last output leaves after it
                exposed = 3 * latency + _ceil(in_tile + w_tile, bandwidth) + _ceil(out_tile, bandwidth)
                for order, weight_times, input_times in orders:
                    traffic = weight_bytes * weight_times + input_sweep * input_times + output_bytes
                    yield Tiling(out_channels=k_tile, in_channels=c_tile, rows=rows, order=order,
                                 tiles=k_tiles * row_tiles * c_tiles, dram_bytes=traffic, transfers=transfers,
                                 dma_cycles=transfers * latency + _ceil(traffic, bandwidth),
                                 exposed_cycles=exposed), row_tiles


def _cost(layer: ConvLayer, acc: Accelerator, dataflow: str) -> LayerCost | None:
    """The layer in one dataflow with its best tiling, or None if no tiling fits the buffer."""
    best: tuple[int, int, Tiling, int, int] | None = None
    fixed = os_compute_cycles(layer, acc) if dataflow == OS else None
    for tiling, row_tiles in _tilings(layer, acc, _row_candidates(layer, acc, dataflow)):
        compute = fixed if fixed is not None else ws_compute_cycles(layer, acc, row_tiles)
        cycles = tiling.exposed_cycles + max(compute, tiling.dma_cycles - tiling.exposed_cycles)
        key = (cycles, tiling.dram_bytes)
        if best is None or key < best[:2]:
            best = (cycles, tiling.dram_bytes, tiling, compute, row_tiles)
    if best is None:
        return None
    cycles, _, tiling, compute, row_tiles = best
    on_chip = _os_energy(layer, acc) if dataflow == OS else _ws_energy(layer, acc, row_tiles)
    # every DRAM word is also written into (or read out of) the global buffer once
    dram_words = tiling.dram_bytes / WORD_BYTES
    energy = on_chip + Energy(dram=dram_words * acc.energy.dram, buffer=dram_words * acc.energy.buffer)
    return LayerCost(layer=layer, dataflow=dataflow, cycles=cycles, compute_cycles=compute, tiling=tiling,
                     energy=energy, alternatives=())


@lru_cache(maxsize=4096)
def simulate_layer(layer: ConvLayer, acc: Accelerator, dataflow: str = BEST) -> LayerCost:
    """The layer's cycles and energy: in the dataflow asked for, or in the faster one ("best")."""
    if dataflow not in DATAFLOWS:
        raise UsageError(f"--dataflow {dataflow!r} is not one of {', '.join(DATAFLOWS)}",
                         "use best (the faster per layer, as the paper), ws or os")
    options = [cost for flow in (WS, OS) if dataflow in (BEST, flow)
               for cost in [_cost(layer, acc, flow)] if cost is not None]
    if not options:
        need = _smallest_tile_bytes(layer, acc, OS if dataflow == OS else WS)
        raise UsageError(f"layer {layer.name!r} ({layer.shape_text}) does not fit the {acc.label} buffer "
                         f"in {dataflow} mode: its smallest tile needs {need:,} bytes, half the buffer is "
                         f"{acc.tile_budget_bytes:,}", "use a larger --buffer" +
                         (" or --dataflow best" if dataflow == OS else ""))
    chosen = min(options, key=lambda cost: (cost.cycles, cost.energy.total))
    alternatives = tuple((cost.dataflow, cost.cycles) for cost in options)
    return LayerCost(layer=chosen.layer, dataflow=chosen.dataflow, cycles=chosen.cycles,
                     compute_cycles=chosen.compute_cycles, tiling=chosen.tiling, energy=chosen.energy,
                     alternatives=alternatives)


def _smallest_tile_bytes(layer: ConvLayer, acc: Accelerator, dataflow: str) -> int:
    rows = min(_row_candidates(layer, acc, dataflow))
    rows_in = min(layer.in_size[0], (rows - 1) * layer.stride[0] + layer.kernel[0])
    taps = layer.kernel[0] * layer.kernel[1]
    return (rows_in * layer.in_size[1] + taps + rows * layer.out_size[1]) * WORD_BYTES


@dataclass(frozen=True)
class SimulationResult:
    """A network on one accelerator: per-layer costs and totals."""

    network: str
    accelerator: Accelerator
    dataflow: str
    layers: tuple[LayerCost, ...]

    @property
    def cycles(self) -> int:
        return sum(cost.cycles for cost in self.layers)

    @property
    def macs(self) -> int:
        return sum(cost.layer.macs for cost in self.layers)

    @property
    def energy(self) -> Energy:
        total = Energy()
        for cost in self.layers:
            total = total + cost.energy
        return total

    @property
    def dram_bytes(self) -> int:
        return sum(cost.tiling.dram_bytes for cost in self.layers)

    @property
    def macs_per_cycle(self) -> float:
        return self.macs / self.cycles if self.cycles else 0.0

    @property
    def milliseconds(self) -> float:
        return self.cycles / (self.accelerator.clock_mhz * 1e3)


def simulate(name: str, layers: tuple[ConvLayer, ...] | list[ConvLayer], acc: Accelerator,
             dataflow: str = BEST) -> SimulationResult:
    """Every layer of a network on `acc`, one layer at a time (the paper's accelerator runs them so)."""
    return SimulationResult(network=name, accelerator=acc, dataflow=dataflow,
                            layers=tuple(simulate_layer(layer, acc, dataflow) for layer in layers))
