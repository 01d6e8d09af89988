"""`toolchain profile` on the host: the INT8 map, the per-node join over real onnxruntime profiles, the record and
its roofline; the mixed-precision plan and the decision of `toolchain optimize` as units.

The join is checked on zoo models of four families exported by the toolchain's own exporter (random weights:
the join does not care what the weights are) and quantized in both formats, with the pipeline's compacted
names and without: onnxruntime's optimiser rewrites each differently (NCHWc blocks and Conv+Add+Relu fusions
on x86, FusedConv on ARM, NHWC int8 convolutions), and the INT8 files have no FP32 name left.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.test_simulate_cli import assert_one_line_error, toolchain  # noqa: F401 (the fixture)
from toolchain.profiling.attribution import FOLDED, FUSED, NONE, OWN, REMOVED, attribute, units
from toolchain.profiling.layers import layer_table
from toolchain.remote.agent_package import AGENT_DIR, PROFILE_AGENT

FAMILIES = ("hps-06-0.25x", "squeezenet-v1.1", "modified-sqnxt-23-1x", "shallow-09-0.5x")
FLAVOURS = (("qoperator", "uint8"), ("qdq", "int8"))
STATUSES = {OWN, FUSED, FOLDED, REMOVED, NONE}


@dataclass(frozen=True)
class Quantized:
    fp32: Path
    raw: Path  # the quantizer's own output: its names derive from the FP32 names
    compact: Path  # as the pipeline ships it: every name but the graph's input and output replaced
    evalset: Path


def quantized_zoo_model(name: str, quant_format: str, activation: str, folder: Path) -> Quantized:
    import torch

    from toolchain.graph.from_torch import export_onnx
    from toolchain.graph.model import compact_names
    from toolchain.models.registry import resolve
    from toolchain.pipeline.config import QuantSettings
    from toolchain.quantization.ort import calibrate, prepare_for_quantization, quantize_static_int8

    spec = resolve(name)
    size = spec.input_size
    torch.manual_seed(0)
    fp32 = folder / "model.fp32.onnx"
    export_onnx(spec.build(num_classes=10, in_channels=3).eval(), torch.zeros(1, 3, size, size), fp32)
    images = np.random.RandomState(0).standard_normal((8, 3, size, size)).astype(np.float32)
    evalset = folder / "evalset.npz"
    np.savez(evalset, images=images[:2], labels=np.zeros(2, dtype=np.int64))
    prepared = folder / "prepared.onnx"
    prepare_for_quantization(fp32, prepared)
    settings = QuantSettings(method="minmax", format=quant_format, activation_type=activation, reduce_range=False)
    calibrate(prepared, images, "input", settings, folder / "calibration.json")
    raw = quantize_static_int8(prepared, folder / "raw.int8.onnx", settings, folder / "calibration.json")
    compact = folder / "model.int8.onnx"
    shutil.copyfile(raw, compact)
    compact_names(compact)
    return Quantized(fp32, raw, compact, evalset)


@pytest.fixture(scope="module", params=[(family, *flavour) for family in FAMILIES for flavour in FLAVOURS],
                ids=lambda p: "-".join(p))
def zoo(request, tmp_path_factory) -> Quantized:
    return quantized_zoo_model(*request.param, tmp_path_factory.mktemp("zoo"))


def profile_here(models: dict[str, Path], evalset: Path, folder: Path, runs: int = 3) -> dict[str, dict]:
    """The profile agent's result per variant, run on this machine as the host runs it (by path)."""
    output = folder / "profile.json"
    command = [sys.executable, str(AGENT_DIR / PROFILE_AGENT), "--evalset", str(evalset), "--runs", str(runs),
               "--warmup", "1", "--output", str(output)]
    for variant, path in models.items():
        command += ["--model", f"{variant}={path}"]
    subprocess.run(command, check=True, capture_output=True)
    return {item["variant"]: item for item in json.loads(output.read_text())["results"]}


def test_the_int8_map_finds_the_quantizers_own_counterparts_by_data_flow_alone(zoo: Quantized) -> None:
    import onnx

    _, raw_map, fp32, raw = layer_table(zoo.fp32, zoo.raw)
    _, compact_map, _, _ = layer_table(zoo.fp32, zoo.compact)
    # the quantizer keeps a node's name (QDQ, float nodes) or appends "_quant" (QOperator)
    assert raw_map.counterpart and all(int8 in (node, f"{node}_quant") for node, int8 in raw_map.counterpart.items())
    # the shipped file's names are "{op}_{index}": the same nodes, found without a single name
    index = {node.name: position for position, node in enumerate(onnx.load(str(zoo.raw)).graph.node)}
    expected = {node: f"{raw.graph.by_name[int8].op_type}_{index[int8]}" for node, int8 in raw_map.counterpart.items()}
    assert compact_map.counterpart == expected
    assert compact_map.unmatched == {} and set(compact_map.folded) == set(raw_map.folded)
    assert all(reason.startswith(("QuantizeLinear", "DequantizeLinear")) for reason in compact_map.int8_only.values())
    assert set(raw_map.counterpart) | set(raw_map.folded) == {node.name for node in fp32.graph.nodes}


def test_the_per_node_join_covers_every_node_of_both_graphs_on_the_host(zoo: Quantized, tmp_path: Path) -> None:
    results = profile_here({"fp32": zoo.fp32, "int8": zoo.compact}, zoo.evalset, tmp_path)
    layers, int8_map, fp32, int8 = layer_table(zoo.fp32, zoo.compact)
    for variant, record in (("fp32", attribute(results["fp32"], layers, fp32.graph, None, None)),
                            ("int8", attribute(results["int8"], layers, fp32.graph, int8.graph, int8_map))):
        rows = record["rows"]
        assert set(rows) == {layer.name for layer in layers}, variant
        assert {row["status"] for row in rows.values()} <= STATUSES, variant
        assert record["coverage"]["unattributed"] == 0 and record["coverage"]["none"] == 0, variant
        for name, row in rows.items():
            if row["status"] in (FUSED, FOLDED):
                assert rows[row["into"]]["status"] == OWN, (variant, name)
            if row["status"] in (REMOVED, FOLDED):
                assert row.get("why"), (variant, name)
        # every profiled node is counted once: in one row or among the extras, each with its reason
        timed = [node for row in rows.values() if row["status"] == OWN for node in row["ort_nodes"]]
        extras = [extra["node"] for extra in record["extras"]]
        assert sorted(timed + extras) == sorted(node["name"] for node in results[variant]["nodes"]), variant
        assert all(extra["why"] for extra in record["extras"]), variant
        coverage = record["coverage"]
        assert coverage["attributed_ms"] + coverage["extras_ms"] == pytest.approx(coverage["total_ms"]), variant
        if variant == "int8":
            assert {extra["op_type"] for extra in record["extras"]} <= {"QuantizeLinear", "DequantizeLinear",
                                                                       "Transpose"}


@dataclass(frozen=True)
class Profiled:
    """The session's hps-06-0.5x artifact profiled here, both variants attributed to its rows."""

    layers: list
    fp32: dict
    int8: dict
    fp32_model: object
    int8_model: object


@pytest.fixture(scope="module")
def profiled_hps(hps_artifact, tmp_path_factory) -> Profiled:
    folder = hps_artifact.folder
    results = profile_here({"fp32": folder / "model.fp32.onnx", "int8": folder / "model.int8.onnx"},
                           folder / "evalset.npz", tmp_path_factory.mktemp("profile"))
    layers, int8_map, fp32, int8 = layer_table(folder / "model.fp32.onnx", folder / "model.int8.onnx")
    return Profiled(layers, attribute(results["fp32"], layers, fp32.graph, None, None),
                    attribute(results["int8"], layers, fp32.graph, int8.graph, int8_map), fp32, int8)


def test_onnxruntime_fusions_are_named_in_the_rows(profiled_hps: Profiled) -> None:
    """hps-06-0.5x as the pipeline ships it: the residual Add and its Relu run inside a convolution's kernel (the
    NCHWc Conv with a Sum input on x86, FusedConv on ARM), the Relu after each INT8 conv is gone."""
    by_op = {layer.name: layer.op_type for layer in profiled_hps.layers}
    fp32_rows, int8_rows = profiled_hps.fp32["rows"], profiled_hps.int8["rows"]
    adds = [name for name, op in by_op.items() if op == "Add"]
    assert adds and all(fp32_rows[name]["status"] == FUSED and by_op[fp32_rows[name]["into"]] == "Conv"
                        for name in adds)
    folded = [name for name, op in by_op.items() if op == "Relu" and int8_rows[name]["status"] == FOLDED]
    assert folded and all("quantized output range" in int8_rows[name]["why"] for name in folded)
    assert all(int8_rows[name]["status"] == OWN for name in adds)  # QLinearAdd: its own int8 kernel


def test_units_give_both_variants_the_same_nodes(profiled_hps: Profiled) -> None:
    fp32_rows, int8_rows, layers = profiled_hps.fp32, profiled_hps.int8, profiled_hps.layers
    found = units(fp32_rows, int8_rows, layers)
    grouped = [row for unit in found for row in unit["rows"]]
    assert len(grouped) == len(set(grouped))
    assert sum(unit["fp32_ms"] for unit in found) == pytest.approx(fp32_rows["coverage"]["attributed_ms"])
    assert sum(unit["int8_ms"] for unit in found) == pytest.approx(int8_rows["coverage"]["attributed_ms"])
    assert all(unit["ratio"] == pytest.approx(unit["int8_ms"] / unit["fp32_ms"]) for unit in found if unit["ratio"])


def test_profile_on_the_host_stores_the_record_and_a_roofline(artifact_copy: Path, toolchain) -> None:  # noqa: F811
    from toolchain.graph.macs import graph_macs

    outcome = toolchain("profile", "--artifact", artifact_copy, "--runs", "20", "--top", "3", "--json")
    assert outcome.code == 0, outcome.stderr
    document = json.loads(outcome.stdout)
    assert document["schema"] == "toolchain.profile/1" and Path(document["stored"]).is_file()
    assert sum(layer["macs"] for layer in document["layers"]) == graph_macs(artifact_copy / "model.fp32.onnx")
    assert "ORT_ENABLE_ALL" in document["graph_optimization"]
    (place,) = document["places"]
    assert place["place"] == {"name": "local", "emulated": False}
    assert place["ceilings"]["peak"]["source"] == "measured" and place["ceilings"]["bandwidth"]["gbps"] > 0
    assert len(place["top"]) == 3 and all(unit["fp32_ms"] > 0 and unit["int8_ms"] > 0 for unit in place["top"])
    assert place["top"][0]["ratio"] == pytest.approx(place["top"][0]["int8_ms"] / place["top"][0]["fp32_ms"])
    for variant in ("fp32", "int8"):
        assert place["variants"][variant]["graph_optimization_level"].endswith("ORT_ENABLE_ALL")
    svg = ET.parse(place["roofline_svg"]).getroot()
    assert svg.get("data-plot") == "roofline" and svg.find("{http://www.w3.org/2000/svg}polyline") is not None
    table = toolchain("profile", "--artifact", artifact_copy, "--runs", "5")
    assert table.code == 0 and "top layers by time on local" in table.stdout and "INT8/FP32" in table.stdout


def test_profile_and_optimize_refuse_what_they_cannot_do_in_one_line(toolchain, tmp_path: Path) -> None:  # noqa: F811
    assert_one_line_error(toolchain("profile"), 2, "exactly one of --artifact")
    assert_one_line_error(toolchain("optimize", "--model", "hps-06-0.5x", "--artifacts", tmp_path), 2,
                          "optimize measures on a target")
    assert_one_line_error(toolchain("optimize", "--model", "hps-06-0.5x", "--artifacts", tmp_path, "--host", "local",
                                    "--flavour", "fp16"), 2, "unknown --flavour")
