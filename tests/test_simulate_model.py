"""The accelerator model of the SqueezeNext paper (Section 3): hand-computed layers, then the paper's Table 3 and
Figure 6 as specifications (orderings exact, ratios within a stated tolerance)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from toolchain.simulate import LARGE, SMALL, ConvLayer, fully_connected, simulate, simulate_layer, zoo_network
from toolchain.simulate.cost import os_compute_cycles, ws_compute_cycles
from toolchain.simulate.networks import IMAGENET, reference_network
from toolchain.simulate.table3 import PAPER_TABLE3, table3

ARRAY_8 = replace(SMALL, buffer_bytes=32 * 1024)  # 8x8 PEs, 16-word buffer reads, 8-word writes, 16 B/cycle DRAM


def conv(cin: int, cout: int, kernel: int, size: int, stride: int = 1, groups: int = 1) -> ConvLayer:
    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    return ConvLayer(name="layer", in_channels=cin, out_channels=cout, kernel=(kernel, kernel), stride=(stride, stride),
                     in_size=(size, size), out_size=(out, out), groups=groups)


def test_a_1x1_conv_in_weight_stationary_mode_takes_the_hand_computed_cycles():
    """16 -> 16 channels, 1x1, on an 8x8 map, 8x8 array.

    Passes: 1 tap x ceil(16/8) input-channel blocks x ceil(16/8) output-channel blocks = 4.
    A pass: 64 pixels streamed + weight load ceil(64 weights / 16 words a cycle) = 4 + 8 rows of partial-sum
    travel = 76 cycles. 4 x 76 = 304.
    """
    assert ws_compute_cycles(conv(16, 16, 1, 8), ARRAY_8) == 304


def test_the_same_layer_with_its_dram_traffic_takes_the_hand_computed_total():
    """Inputs 16x8x8 and outputs 16x8x8 are 2048 bytes each, weights 512: 4608 bytes, 288 cycles at 16 B/cycle.

    One tile (3 transfers): DMA 300 + 288 = 588, all of it exposed (nothing to overlap): 588 + max(304, 0) = 892.
    Two tiles of 8 input channels (5 transfers): DMA 500 + 288 = 788; exposed: the first load (2 x 100 +
    (1024 + 256) / 16 = 280) and the store (100 + 2048 / 16 = 228) = 508; 508 + max(304, 788 - 508) = 812.
    The tiler keeps the faster: 812.
    """
    cost = simulate_layer(conv(16, 16, 1, 8), ARRAY_8, "ws")
    assert (cost.tiling.tiles, cost.tiling.in_channels, cost.tiling.dram_bytes) == (2, 8, 4608)
    assert (cost.tiling.dma_cycles, cost.tiling.exposed_cycles) == (788, 508)
    assert cost.cycles == 812
    assert cost.bound == "memory"


def test_a_3x3_conv_in_output_stationary_mode_takes_the_hand_computed_cycles():
    """4 -> 2 channels, 3x3, 8x8 output, 8x8 array: one 8x8 output block per output channel.

    Per block: each of the 4 input channels needs a 10x10 patch, ceil(100 / 16) = 7 cycles -> 28; the 36 weights
    at 40 % sparsity are ceil(21.6) = 22 broadcast cycles; the longer (28) plus the drain of 64 outputs at 8 a
    cycle (8) = 36. Two output channels: 72.
    """
    assert os_compute_cycles(conv(4, 2, 3, 8), ARRAY_8) == 72


def test_weight_sparsity_is_exploited_in_output_stationary_mode_only():
    layer = conv(64, 64, 3, 16)
    dense = replace(ARRAY_8, weight_sparsity=0.0)
    assert os_compute_cycles(layer, ARRAY_8) < os_compute_cycles(layer, dense)
    assert ws_compute_cycles(layer, ARRAY_8) == ws_compute_cycles(layer, dense)
    assert simulate_layer(layer, ARRAY_8, "os").energy.mac == pytest.approx(0.6 * layer.macs)
    assert simulate_layer(layer, ARRAY_8, "ws").energy.mac == layer.macs


def test_depthwise_groups_are_packed_on_the_diagonal_in_weight_stationary_mode():
    """32 depthwise 3x3 channels, 8x8 array: 8 groups a pass, 4 passes a tap, 9 taps = 36 passes of (64 + 4 + 8)."""
    assert ws_compute_cycles(conv(32, 32, 3, 8, groups=32), ARRAY_8) == 36 * (64 + 4 + 8)


def test_a_fully_connected_layer_is_a_1x1_conv_on_a_1x1_map():
    layer = fully_connected("fc", 9216, 4096)
    assert layer.macs == layer.weights == 9216 * 4096
    assert simulate_layer(layer, LARGE).dataflow == "ws"  # one output pixel: SOC-MOP would use one PE


def test_best_picks_the_faster_dataflow_per_layer():
    stem = conv(3, 64, 7, 224, stride=2)  # few input channels, large map: OS
    pointwise = conv(64, 64, 1, 28)  # no spatial reuse: WS
    for layer, expected in ((stem, "os"), (pointwise, "ws")):
        best = simulate_layer(layer, LARGE)
        assert best.dataflow == expected
        assert best.cycles == min(cycles for _, cycles in best.alternatives)


def test_the_reference_networks_have_the_paper_mac_counts():
    """Table 3's MAC column: AlexNet 725M, MobileNet 574M, Tiny Darknet 495M (ours within 1 %)."""
    paper = {row.model: row.macs_m for row in PAPER_TABLE3}
    for name, tolerance in (("alexnet", 0.01), ("tiny-darknet", 0.01), ("mobilenet-v1", 0.01)):
        assert reference_network(name).macs / 1e6 == pytest.approx(paper[name], rel=tolerance)


# --- Table 3 and Figure 6 ----------------------------------------------------------------------------------

# Normalised time (cycles / the fastest network's) within 20 % of the paper's for every row: the paper gives the
# accelerator's parameters but not its data-path timings, clock, tiling cost function or exact shapes (its
# 2.0-SqNxt MAC counts are 6-10 % below the zoo's); measured worst case: AlexNet on 8x8, +18 %.
TIME_TOLERANCE = 0.20
# Energy relative to 1.0-SqNxt-23v5 within a factor of 1.5: the paper "slightly modified" Eyeriss' normalised
# costs and does not print them; we use Eyeriss' own. Measured worst case: Tiny Darknet on 16x16, x1.42.
ENERGY_FACTOR = 1.5


@pytest.fixture(scope="module")
def rows():
    return {row.paper.model: row for row in table3()}


def test_table3_v5_is_fastest_and_v1_slowest_of_the_sqnxt_23_variants_on_16x16(rows):
    times = [rows[f"sqnxt-23-1x-v{version}"].results["16x16"].cycles for version in (5, 4, 3, 2, 1)]
    assert times == sorted(times)
    assert times[0] < times[-1]


def test_table3_sqnxt_23_variants_spend_less_energy_from_v1_to_v5_on_16x16(rows):
    energies = [rows[f"sqnxt-23-1x-v{version}"].results["16x16"].energy.total for version in (5, 4, 3, 2, 1)]
    assert energies == sorted(energies)


def test_table3_v2_to_v5_are_equally_fast_on_8x8(rows):
    """The paper prints x1.00 for all four on 8x8: the early layers' few channels still fill 8 rows."""
    times = [rows[f"sqnxt-23-1x-v{version}"].results["8x8"].cycles for version in (2, 3, 4, 5)]
    assert max(times) / min(times) < 1.02


@pytest.mark.parametrize("key", ["8x8", "16x16"])
def test_table3_squeezenet_v1_0_and_alexnet_are_far_slower_than_sqnxt_23_v5(rows, key):
    fastest = rows["sqnxt-23-1x-v5"].results[key].cycles
    assert rows["squeezenet-v1.0"].results[key].cycles > 2 * fastest
    assert rows["alexnet"].results[key].cycles > 5 * fastest
    assert rows["alexnet"].results[key].cycles > rows["squeezenet-v1.0"].results[key].cycles


@pytest.mark.parametrize("key", ["8x8", "16x16"])
def test_table3_normalised_times_are_within_the_tolerance_of_the_paper(rows, key):
    off = {}
    for name, row in rows.items():
        paper = row.paper.time_8x8 if key == "8x8" else row.paper.time_16x16
        off[name] = row.relative_time[key] / paper - 1
    assert all(abs(value) <= TIME_TOLERANCE for value in off.values()), off


@pytest.mark.parametrize("key", ["8x8", "16x16"])
def test_table3_energies_relative_to_v5_are_within_the_factor_of_the_paper(rows, key):
    def paper_energy(name: str) -> float:
        row = rows[name].paper
        return row.energy_8x8 if key == "8x8" else row.energy_16x16

    ours_v5, paper_v5 = rows["sqnxt-23-1x-v5"].results[key].energy.total, paper_energy("sqnxt-23-1x-v5")
    factors = {name: (row.results[key].energy.total / ours_v5) / (paper_energy(name) / paper_v5)
               for name, row in rows.items()}
    assert all(1 / ENERGY_FACTOR <= value <= ENERGY_FACTOR for value in factors.values()), factors


def _utilisation(result, prefix: str) -> float:
    costs = [cost for cost in result.layers if cost.layer.name.startswith(prefix)]
    return sum(cost.layer.macs for cost in costs) / sum(cost.cycles for cost in costs) / result.accelerator.pes


def test_figure6_the_early_layers_efficiency_drop_is_larger_on_16x16_than_on_8x8():
    """Figure 6: 'the relatively poor efficiency in early layers for the 16x16 PE array due to the small number of
    filter channels'. Measured: first-stage blocks' PE utilisation over the third stage's."""
    network = zoo_network("sqnxt-23-1x-v1", IMAGENET)
    drops = {}
    for acc in (SMALL, LARGE):
        result = simulate(network.name, network.layers, acc)
        drops[acc.rows] = _utilisation(result, "stages.0.") / _utilisation(result, "stages.2.")
    assert drops[16] < 0.8 * drops[8]
    assert drops[16] < 0.7


def test_figure6_the_7x7_stem_is_about_a_quarter_of_v1_time_on_16x16():
    """The paper: 'the first 7x7 convolutional layer accounts for 26% of the total inference time'."""
    network = zoo_network("sqnxt-23-1x-v1", IMAGENET)
    result = simulate(network.name, network.layers, LARGE)
    assert result.layers[0].layer.kernel == (7, 7)
    assert 0.2 <= result.layers[0].cycles / result.cycles <= 0.32
