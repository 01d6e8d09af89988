"""`toolchain simulate`: cycles and energy per layer on the SqueezeNext paper's PE-array accelerator.

``--model M`` (a zoo model, or the paper's reference networks alexnet, mobilenet-v1, tiny-darknet) or
``--onnx FILE`` on one accelerator configuration; ``--table3`` the paper's Table 3, ours beside the paper's.
The model and its assumptions: docs/simulate.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from toolchain.cli.options import JsonOption, OptionalModelOption
from toolchain.cli.output import emit_json, info, table
from toolchain.errors import UsageError

DEFAULT_ARRAY, DEFAULT_BUFFER = "16x16", "128K"
EXAMPLE = "toolchain simulate --model sqnxt-23-1x-v5 --configuration imagenet"


def _layer_record(cost: object) -> dict[str, object]:
    from toolchain.simulate.cost import LayerCost

    assert isinstance(cost, LayerCost)
    layer, tiling = cost.layer, cost.tiling
    return {
        "name": layer.name, "kind": layer.kind, "in_channels": layer.in_channels,
        "out_channels": layer.out_channels, "kernel": list(layer.kernel), "stride": list(layer.stride),
        "groups": layer.groups, "in_size": list(layer.in_size), "out_size": list(layer.out_size),
        "macs": layer.macs, "weights": layer.weights, "dataflow": cost.dataflow, "cycles": cost.cycles,
        "compute_cycles": cost.compute_cycles, "dma_cycles": tiling.dma_cycles, "bound": cost.bound,
        "macs_per_cycle": round(cost.macs_per_cycle, 3),
        "alternatives": {flow: cycles for flow, cycles in cost.alternatives},
        "dram_bytes": tiling.dram_bytes,
        "tiling": {"out_channels": tiling.out_channels, "in_channels": tiling.in_channels, "rows": tiling.rows,
                   "order": tiling.order, "tiles": tiling.tiles, "transfers": tiling.transfers},
        "energy": cost.energy.total, "energy_parts": vars(cost.energy),
    }


def _simulate_one(network: object, acc: object, dataflow: str, chart: Path | None, json_output: bool) -> None:
    from toolchain.simulate.chart import write_chart
    from toolchain.simulate.cost import simulate as run_simulation
    from toolchain.simulate.networks import Network

    assert isinstance(network, Network)
    result = run_simulation(network.name, network.layers, acc, dataflow)  # type: ignore[arg-type]
    if chart is not None:
        write_chart(result, chart)
    if json_output:
        energy = result.energy
        emit_json({
            "network": network.name, "source": network.source, "configuration": network.configuration,
            "input": list(network.input_shape), "note": network.note, "accelerator": result.accelerator.describe(),
            "dataflow": dataflow, "layers": [_layer_record(cost) for cost in result.layers],
            "total": {"cycles": result.cycles, "macs": result.macs, "macs_per_cycle": round(result.macs_per_cycle, 3),
                      "milliseconds": round(result.milliseconds, 4), "dram_bytes": result.dram_bytes,
                      "energy": energy.total, "energy_parts": vars(energy)},
            "chart": str(chart) if chart is not None else None,
            "energy_unit": "one 16-bit MAC (Eyeriss-style normalised costs)", "model": "docs/simulate.md"})
        return
    rows = [(cost.layer.name, cost.layer.shape_text, f"{cost.layer.macs / 1e6:.2f}", cost.dataflow,
             f"{cost.cycles:,}", f"{cost.macs_per_cycle:.1f}", cost.bound, f"{cost.tiling.dram_bytes / 1024:,.0f}",
             f"{cost.energy.total:.3g}") for cost in result.layers]
    table(f"{network.name} ({network.configuration}, input {'x'.join(map(str, network.input_shape))}) on "
          f"{result.accelerator.label}, dataflow {dataflow}",
          ["layer", "shape", "MMACs", "flow", "cycles", "MACs/cycle", "bound", "DRAM KB", "energy"], rows,
          right_align=["MMACs", "cycles", "MACs/cycle", "DRAM KB", "energy"])
    info(f"total: {result.cycles:,} cycles ({result.milliseconds:.3f} ms at {result.accelerator.clock_mhz:g} MHz), "
         f"{result.macs / 1e6:.1f} MMACs, {result.macs_per_cycle:.1f} MACs/cycle, energy {result.energy.total:.3g} "
         "(units of one 16-bit MAC), DRAM "
         f"{result.dram_bytes / 1e6:.2f} MB")
    if chart is not None:
        info(f"chart: {chart}")


def _table3(json_output: bool) -> None:
    from toolchain.simulate.table3 import TABLE3_SOURCE, table3

    rows = table3()
    if json_output:
        emit_json({"source": TABLE3_SOURCE, "normalised_by": "the fastest network's cycles, per configuration",
                   "energy_unit": "ours: one 16-bit MAC; the paper's: as printed", "rows": [r.record() for r in rows]})
        return
    lines = []
    for row in rows:
        record = row.record()
        small, large = record["configurations"]["8x8"], record["configurations"]["16x16"]  # type: ignore[index]
        lines.append((row.paper.label, row.network.name, f"{record['macs_m']:.0f} / {row.paper.macs_m:g}",
                      f"x{small['time']:.2f} / x{row.paper.time_8x8:.2f}",
                      f"{small['energy']:.1e} / {row.paper.energy_8x8:.1e}",
                      f"x{large['time']:.2f} / x{row.paper.time_16x16:.2f}",
                      f"{large['energy']:.1e} / {row.paper.energy_16x16:.1e}"))
    table(f"Table 3, ours / paper's ({TABLE3_SOURCE}); time normalised by the fastest network per configuration",
          ["model", "network", "MMACs", "8x8 32KB time", "8x8 energy", "16x16 128KB time", "16x16 energy"], lines)
    info("energy: ours in units of one 16-bit MAC (Eyeriss-style costs), the paper's as printed; see docs/simulate.md")


def simulate(
    model: OptionalModelOption = None,
    configuration: Annotated[Optional[str], typer.Option(
        "--configuration", help="cifar or imagenet (the paper's ImageNet shapes); default: the model's own.")] = None,
    onnx_file: Annotated[Optional[Path], typer.Option("--onnx", help="An ONNX image classifier to simulate.")] = None,
    array: Annotated[Optional[str], typer.Option(
        "--array", help=f"PE array ROWSxCOLS: 8x8 or 16x16 as the paper (default {DEFAULT_ARRAY}).")] = None,
    buffer: Annotated[Optional[str], typer.Option(
        "--buffer", help=f"Global buffer size: 32K or 128K as the paper (default {DEFAULT_BUFFER}).")] = None,
    dataflow: Annotated[str, typer.Option(
        "--dataflow", help="best (the faster per layer, as the paper), ws or os (SOC-MOP).")] = "best",
    clock_mhz: Annotated[Optional[float], typer.Option(
        "--clock-mhz", help="Clock that turns 16 GB/s into bytes per cycle (default 1000; the paper gives none).")] = None,
    chart: Annotated[Optional[Path], typer.Option(
        "--chart", help="Write a per-layer SVG chart like the paper's Figure 6 (cycles, MACs/cycle).")] = None,
    table3: Annotated[bool, typer.Option("--table3", help="Reproduce the paper's Table 3, ours beside the paper's.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Per-layer cycles and energy on the SqueezeNext paper's PE-array accelerator (WS / OS dataflows)."""
    from toolchain.simulate.accelerator import accelerator
    from toolchain.simulate.cost import DATAFLOWS

    chosen = [flag for flag, given in (("--model", model is not None), ("--onnx", onnx_file is not None),
                                       ("--table3", table3)) if given]
    if len(chosen) != 1:
        raise UsageError("pass exactly one of --model NAME, --onnx FILE and --table3"
                         + (f" (got {', '.join(chosen)})" if chosen else ""), f"e.g. {EXAMPLE}")
    if dataflow not in DATAFLOWS:
        raise UsageError(f"--dataflow {dataflow!r} is not one of {', '.join(DATAFLOWS)}",
                         "use best (the faster per layer, as the paper), ws or os")
    if table3:
        extra = [name for name, value in (("--array", array), ("--buffer", buffer), ("--chart", chart),
                                          ("--configuration", configuration), ("--clock-mhz", clock_mhz))
                 if value is not None] + (["--dataflow"] if dataflow != "best" else [])
        if extra:
            raise UsageError(f"--table3 runs the paper's own configurations; {', '.join(extra)} does not apply",
                             "drop them, or simulate one network: toolchain simulate --model M --array 8x8 ...")
        _table3(json_output)
        return
    acc = accelerator(array or DEFAULT_ARRAY, buffer or DEFAULT_BUFFER, clock_mhz)
    if onnx_file is not None:
        from toolchain.simulate.networks import onnx_network

        if configuration is not None:
            raise UsageError("--configuration applies to --model only: an ONNX file has its own input size",
                             "drop --configuration")
        network = onnx_network(onnx_file)
    else:
        from toolchain.simulate.networks import zoo_network

        network = zoo_network(model or "", configuration)
    _simulate_one(network, acc, dataflow, chart, json_output)


def register(app: typer.Typer) -> None:
    """Add `simulate` to the toolchain app."""
    app.command("simulate")(simulate)
