"""The SqueezeNext paper's Table 3, simulated here, beside the paper's own figures.

The paper's figures (Gholami et al. 2018, "SqueezeNext: Hardware-Aware Neural Network Design", Table 3:
"Simulated hardware performance results in terms of inference time and energy for the 8x8 and 16x16 PE
array configurations. The time for each configuration is normalized by the number of cycles of the fastest
network for each configuration") are quoted as printed; they are the "paper" columns only. Ours are
computed by toolchain.simulate.cost on the networks' ImageNet shapes, normalised the same way: by the
fastest of the networks simulated, per configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolchain.simulate.accelerator import LARGE, SMALL, Accelerator
from toolchain.simulate.cost import SimulationResult, simulate
from toolchain.simulate.networks import IMAGENET, Network, zoo_network

TABLE3_SOURCE = "Gholami et al. 2018, SqueezeNext: Hardware-Aware Neural Network Design, Table 3"


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Table 3 as printed (MACs in millions, energy in the paper's units)."""

    label: str
    model: str  # our name of the network
    params_m: float
    macs_m: float
    time_8x8: float
    energy_8x8: float
    time_16x16: float
    energy_16x16: float


PAPER_TABLE3 = (
    PaperRow("AlexNet", "alexnet", 60.9, 725, 5.46, 1.6e10, 8.26, 1.5e10),
    PaperRow("SqueezeNet v1.0", "squeezenet-v1.0", 1.2, 837, 3.42, 6.7e9, 2.59, 4.5e9),
    PaperRow("SqueezeNet v1.1", "squeezenet-v1.1", 1.2, 352, 1.60, 3.3e9, 1.31, 2.4e9),
    PaperRow("Tiny Darknet", "tiny-darknet", 1.0, 495, 1.92, 3.8e9, 1.50, 2.5e9),
    PaperRow("1.0-SqNxt-23", "sqnxt-23-1x-v1", 0.72, 282, 1.17, 3.2e9, 1.22, 2.5e9),
    PaperRow("1.0-SqNxt-23v2", "sqnxt-23-1x-v2", 0.74, 228, 1.00, 2.8e9, 1.13, 2.4e9),
    PaperRow("1.0-SqNxt-23v3", "sqnxt-23-1x-v3", 0.74, 228, 1.00, 2.7e9, 1.08, 2.3e9),
    PaperRow("1.0-SqNxt-23v4", "sqnxt-23-1x-v4", 0.77, 228, 1.00, 2.6e9, 1.02, 2.2e9),
    PaperRow("1.0-SqNxt-23v5", "sqnxt-23-1x-v5", 0.94, 228, 1.00, 2.6e9, 1.00, 2.0e9),
    PaperRow("MobileNet", "mobilenet-v1", 4.2, 574, 2.94, 9.1e9, 2.60, 5.8e9),
    PaperRow("2.0-SqNxt-23", "sqnxt-23-2x-v1", 2.4, 749, 3.24, 8.1e9, 2.72, 5.9e9),
    PaperRow("2.0-SqNxt-23v4", "sqnxt-23-2x-v4", 2.56, 708, 3.17, 7.5e9, 2.55, 5.4e9),
    PaperRow("2.0-SqNxt-23v5", "sqnxt-23-2x-v5", 3.23, 708, 3.17, 7.4e9, 2.55, 5.4e9),
)
CONFIGURATIONS = (("8x8", SMALL), ("16x16", LARGE))


@dataclass(frozen=True)
class Table3Row:
    """One network: the paper's figures and ours, per configuration."""

    paper: PaperRow
    network: Network
    results: dict[str, SimulationResult]  # "8x8" / "16x16"
    relative_time: dict[str, float]  # cycles / the fastest network's cycles, per configuration

    def record(self) -> dict[str, object]:
        """A JSON-ready record: ours beside the paper's."""
        paper = self.paper
        configurations = {}
        for key, result in self.results.items():
            paper_time, paper_energy = ((paper.time_8x8, paper.energy_8x8) if key == "8x8"
                                        else (paper.time_16x16, paper.energy_16x16))
            configurations[key] = {
                "accelerator": result.accelerator.label, "cycles": result.cycles,
                "time": round(self.relative_time[key], 3), "paper_time": paper_time,
                "energy": result.energy.total, "paper_energy": paper_energy,
                "macs_per_cycle": round(result.macs_per_cycle, 2)}
        return {"model": paper.label, "network": self.network.name, "source": self.network.source,
                "input": list(self.network.input_shape), "weights_m": round(self.network.weights / 1e6, 3),
                "paper_params_m": paper.params_m, "macs_m": round(self.network.macs / 1e6, 1),
                "paper_macs_m": paper.macs_m, "configurations": configurations}


def table3(configurations: tuple[tuple[str, Accelerator], ...] = CONFIGURATIONS,
           rows: tuple[PaperRow, ...] = PAPER_TABLE3) -> list[Table3Row]:
    """Simulate every network of Table 3 on both of the paper's configurations."""
    networks = [zoo_network(row.model, IMAGENET) for row in rows]
    results = {key: [simulate(net.name, net.layers, acc) for net in networks] for key, acc in configurations}
    fastest = {key: min(result.cycles for result in found) for key, found in results.items()}
    return [Table3Row(paper=row, network=net,
                      results={key: results[key][index] for key, _ in configurations},
                      relative_time={key: results[key][index].cycles / fastest[key] for key, _ in configurations})
            for index, (row, net) in enumerate(zip(rows, networks))]
