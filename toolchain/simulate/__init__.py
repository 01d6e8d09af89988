"""The SqueezeNext paper's PE-array accelerator simulator (Gholami et al. 2018, Section 3): cycles and energy per layer.

Layer shapes come from the zoo, the paper's reference networks or any ONNX classifier (`networks`); the
accelerator's parameters are in `accelerator`, the cycle and energy model in `cost`, the paper's Table 3
in `table3`, the Figure 6 style chart in `chart`. The model and every assumption: docs/simulate.md.
"""

from toolchain.simulate.accelerator import LARGE, SMALL, Accelerator, EnergyCosts, accelerator
from toolchain.simulate.cost import BEST, DATAFLOWS, OS, WS, Energy, LayerCost, SimulationResult, simulate, simulate_layer
from toolchain.simulate.layers import ConvLayer, fully_connected
from toolchain.simulate.networks import REFERENCE_NETWORKS, Network, onnx_network, zoo_network

__all__ = [
    "LARGE", "SMALL", "Accelerator", "EnergyCosts", "accelerator", "BEST", "DATAFLOWS", "OS", "WS", "Energy",
    "LayerCost", "SimulationResult", "simulate", "simulate_layer", "ConvLayer", "fully_connected",
    "REFERENCE_NETWORKS", "Network", "onnx_network", "zoo_network",
]
