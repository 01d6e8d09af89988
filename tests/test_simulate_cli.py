"""`toolchain simulate` through the real entry point: a real exported ONNX, the JSON and chart outputs, and the
boundary rule (one `error:` line naming the file, one `hint:` line, exit 1 or 2 for usage, nothing half-written)."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from toolchain.cli.main import run

TINY = "hps-06-0.25x"
SVG = "{http://www.w3.org/2000/svg}"


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def toolchain(capsys):
    def invoke(*args: str | Path) -> Outcome:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            run([str(arg) for arg in args])
        captured = capsys.readouterr()
        return Outcome(int(exited.value.code or 0), captured.out, captured.err)

    return invoke


def assert_one_line_error(outcome: Outcome, code: int, *fragments: str) -> None:
    lines = outcome.stderr.strip().splitlines()
    assert outcome.code == code, outcome
    assert len(lines) == 2, outcome.stderr
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: "), outcome.stderr
    assert "Traceback" not in outcome.stderr and "internal error" not in outcome.stderr and outcome.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def exported_onnx(tmp_path_factory) -> Path:
    """A tiny zoo model exported by the toolchain's own exporter (torch.onnx)."""
    import torch

    from toolchain.graph.from_torch import export_onnx
    from toolchain.models import create_model

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(create_model(TINY), torch.zeros(1, 3, 32, 32), path)
    return path


def test_the_onnx_path_gives_the_zoo_models_layers_and_cycles(exported_onnx):
    from toolchain.simulate import LARGE, onnx_network, simulate, zoo_network

    from_onnx, from_zoo = onnx_network(exported_onnx), zoo_network(TINY)
    shapes = lambda net: [(l.in_channels, l.out_channels, l.kernel, l.stride, l.in_size, l.out_size, l.groups, l.kind)
                          for l in net.layers]  # noqa: E731
    assert shapes(from_onnx) == shapes(from_zoo)
    assert from_onnx.input_shape == (3, 32, 32)
    assert simulate("o", from_onnx.layers, LARGE).cycles == simulate("z", from_zoo.layers, LARGE).cycles


def test_simulate_json_has_per_layer_and_total_cycles_and_energy(toolchain, exported_onnx):
    outcome = toolchain("simulate", "--onnx", exported_onnx, "--array", "8x8", "--buffer", "32K", "--dataflow", "ws",
                        "--json")
    assert outcome.code == 0, outcome.stderr
    result = json.loads(outcome.stdout)
    assert result["accelerator"]["array"] == "8x8" and result["accelerator"]["buffer_bytes"] == 32 * 1024
    layers = result["layers"]
    assert layers and all(layer["dataflow"] == "ws" for layer in layers)
    assert result["total"]["cycles"] == sum(layer["cycles"] for layer in layers)
    assert result["total"]["energy"] == pytest.approx(sum(layer["energy"] for layer in layers))
    assert result["total"]["macs"] == sum(layer["macs"] for layer in layers)


def test_simulate_a_reference_network_as_a_table(toolchain):
    outcome = toolchain("simulate", "--model", "alexnet", "--array", "16x16", "--buffer", "128K")
    assert outcome.code == 0, outcome.stderr
    assert "fc6" in outcome.stdout and "conv1" in outcome.stdout
    assert "total:" in outcome.stderr


def test_the_chart_is_well_formed_svg_with_one_bar_per_layer(toolchain, tmp_path):
    chart = tmp_path / "figure6.svg"
    outcome = toolchain("simulate", "--model", "sqnxt-23-1x-v1", "--configuration", "imagenet", "--chart", chart,
                        "--json")
    assert outcome.code == 0, outcome.stderr
    layers = json.loads(outcome.stdout)["layers"]
    root = ET.parse(chart).getroot()
    assert root.tag == f"{SVG}svg"
    bars = [rect for rect in root.iter(f"{SVG}rect") if rect.get("class") == "bar"]
    assert len(bars) == len(layers)
    assert [bar.find(f"{SVG}title").text.split(" ")[0] for bar in bars] == [layer["name"] for layer in layers]
    assert len(root.find(f"{SVG}polyline").get("points").split()) == len(layers)


def test_table3_prints_ours_beside_the_papers(toolchain):
    outcome = toolchain("simulate", "--table3", "--json")
    assert outcome.code == 0, outcome.stderr
    rows = json.loads(outcome.stdout)["rows"]
    assert [row["model"] for row in rows][:2] == ["AlexNet", "SqueezeNet v1.0"]
    v5 = next(row for row in rows if row["model"] == "1.0-SqNxt-23v5")
    assert v5["configurations"]["16x16"]["time"] == 1.0 and v5["configurations"]["16x16"]["paper_time"] == 1.0
    assert all({"time", "paper_time", "energy", "paper_energy"} <= set(row["configurations"]["8x8"]) for row in rows)


# --- the boundary rule -------------------------------------------------------------------------------------


def _classifier_without_convs(path: Path, node_name: str = "pool") -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"], name=node_name),
             helper.make_node("Flatten", ["p"], ["y"])]
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y])), str(path))
    return path


@pytest.mark.parametrize("kind, expected", [("missing", "not found"), ("garbage", "is not an ONNX model"),
                                            ("empty", "is not an ONNX model"), ("no-convs", "no Conv")])
def test_a_missing_corrupt_or_conv_less_onnx_is_one_error_naming_the_file(toolchain, tmp_path, kind, expected):
    path = tmp_path / f"{kind}.onnx"
    if kind == "garbage":
        path.write_bytes(os.urandom(2048))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "no-convs":
        _classifier_without_convs(path)
    assert_one_line_error(toolchain("simulate", "--onnx", path), 1, expected, path.name)


@pytest.mark.parametrize("args, expected", [
    (("--model", "sqnxt-23-1x-v9"), "no version v9"),
    (("--model", "alexnett"), "unknown model"),
    (("--model", "hps-06-0.5x", "--configuration", "imagenet"), "no 'imagenet' configuration"),
    (("--model", "alexnet", "--array", "16by16"), "--array"),
    (("--model", "alexnet", "--array", "0x16"), "--array"),
    (("--model", "alexnet", "--buffer", "lots"), "--buffer"),
    (("--model", "alexnet", "--buffer", "12"), "out of range"),
    (("--model", "alexnet", "--dataflow", "rs"), "--dataflow"),
    (("--table3", "--array", "8x8"), "--table3"),
    ((), "exactly one of"),
    (("--model", "alexnet", "--table3"), "exactly one of"),
])
def test_bad_names_and_option_values_are_usage_errors(toolchain, args, expected):
    assert_one_line_error(toolchain("simulate", *args), 2, expected)


def test_the_alexnett_hint_names_the_reference_network(toolchain):
    outcome = toolchain("simulate", "--model", "alexnett")
    assert "alexnet" in outcome.stderr.splitlines()[-1]


def test_a_layer_that_fits_no_buffer_tiling_is_a_usage_error(toolchain):
    # AlexNet's 11x11/4 conv1 needs 11 input rows of 227 pixels: more than half of a 1 KB buffer
    assert_one_line_error(toolchain("simulate", "--model", "alexnet", "--buffer", "1K"), 2, "does not fit", "conv1")


def test_an_unwritable_chart_path_is_one_error_and_leaves_nothing(toolchain, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        # root writes anywhere a mode forbids: then /proc, where no file can be created, is the unwritable folder
        target = folder if not os.access(folder, os.W_OK) else Path("/proc")
        before = sorted(target.iterdir()) if target == folder else None
        outcome = toolchain("simulate", "--model", TINY, "--chart", target / "chart.svg")
        assert_one_line_error(outcome, 1, "chart.svg")
        assert not (target / "chart.svg").exists()
        if before is not None:
            assert sorted(target.iterdir()) == before
    finally:
        folder.chmod(0o700)


def test_a_chart_path_under_a_file_is_one_error(toolchain, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(toolchain("simulate", "--model", TINY, "--chart", blocker / "chart.svg"), 1, "chart.svg")


def test_node_names_from_an_onnx_file_never_reach_the_terminal_raw(toolchain, tmp_path, exported_onnx):
    import onnx

    model = onnx.load(str(exported_onnx))
    next(node for node in model.graph.node if node.op_type == "Conv").name = "conv\x1b[31mred\u202e"
    path = tmp_path / "hostile.onnx"
    onnx.save(model, str(path))
    chart = tmp_path / "hostile.svg"
    outcome = toolchain("simulate", "--onnx", path, "--chart", chart)
    assert outcome.code == 0, outcome.stderr
    assert "\x1b" not in outcome.stdout and "\u202e" not in outcome.stdout
    assert "conv\\x1b[31mred" in outcome.stdout
    ET.parse(chart)  # still well-formed XML
    assert "\x1b" not in chart.read_text()
