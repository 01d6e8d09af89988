"""The gate ranks only what the chosen format can change (issue: every paper model ships in INT8).

QOperator leaves BatchNormalization in float between a dequantize and a quantize, so keeping a BN "in
float" changes nothing there; the scores come from a QDQ twin that quantizes exactly the op types the
shipped format does, and name no other node.
"""

from __future__ import annotations

import onnx

from tests.fixtures.pipeline import BROKEN_NODE
from toolchain.pipeline import ExportRequest, run_export
from toolchain.quantization.ort import quantized_op_types

SMALL_EVAL = 200


def test_the_scorer_never_ranks_a_node_the_format_leaves_in_float(broken_int8_checkpoint, tmp_path):
    result = run_export(ExportRequest(model="hps-06-0.25x", checkpoint=broken_int8_checkpoint,
                                      artifacts=tmp_path, eval_count=SMALL_EVAL))
    document = result.manifest.to_json()
    quantized = set(quantized_op_types("qoperator"))
    assert "BatchNormalization" not in quantized
    ranked = document["quantization"]["sensitivity"]
    assert ranked and {entry["op_type"] for entry in ranked} <= quantized
    assert ranked[0]["node"] == BROKEN_NODE  # the ruined 3x1 convolution scores worst
    shipped = onnx.load(str(result.folder / "model.int8.onnx"))
    assert sum(node.op_type == "BatchNormalization" for node in shipped.graph.node) >= 1  # BNs stay float there
    for step in document["quantization"]["steps"]:
        assert not any("BatchNormalization" in name for name in step["kept_float"])


class _TableSearch:
    """GateSearch's pruning over a table of drops (a unit test of the logic; the real path is the export above)."""

    def __init__(self, drops: dict[frozenset, float], max_drop: float = 1.0) -> None:
        from toolchain.pipeline.config import QuantSettings
        from toolchain.quantization.gate import GateSearch, GateStep

        self.search = GateSearch.__new__(GateSearch)
        self.search.settings, self.search.attempts = QuantSettings(max_drop=max_drop), {}
        self.measured: list[tuple[str, ...]] = []

        def attempt(kept: tuple[str, ...]) -> GateStep:
            self.measured.append(kept)
            step = GateStep(kept, 0.0, drops.get(frozenset(kept), 9.0), 0.0)
            self.search.attempts[kept] = (step, None)
            return step

        self.search.attempt = attempt


def test_pruning_returns_nodes_to_int8_only_where_the_remeasured_drop_still_passes():
    drops = {frozenset("abcd"): 0.5, frozenset("abc"): 0.8, frozenset("ab"): 1.5, frozenset("ac"): 0.9,
             frozenset("a"): 3.0}
    table = _TableSearch(drops)
    assert table.search.pruned(("a", "b", "c", "d")) == ("a", "c")
    assert table.measured == [("a", "b", "c"), ("a", "b"), ("a", "c")]  # d, then c (stepped back), then b
    assert _TableSearch(drops).search.pruned(("a",)) == ("a",)  # the top node is never re-measured alone
