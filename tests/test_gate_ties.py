"""Ties in the gate's ranking are ordered by each node's effect on the final logits (issue: rank what matters).

Local scores tie often and exactly: a tensor read by two nodes scores both when it is their noisiest.
`rank_nodes` measures, for the tied nodes only, the logits' SQNR with only that node quantized (the
twin's own scales on the float model) and ranks the node that hurts the logits more first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from toolchain.pipeline import ExportRequest, run_export
from toolchain.pipeline.config import QuantSettings
from toolchain.quantization.ort import calibrate, quantize_static_int8, quantized_op_types
from toolchain.quantization.sensitivity import TIE_BREAK_CAP, TIE_DB, rank_nodes, score_nodes

SMALL_EVAL = 200
MINOR, MAJOR = "a_minor_branch", "b_major_branch"  # by name MINOR ranks first


def _two_branch_model(path: Path) -> Path:
    """Two identical convs read the input (their tensors quantize identically: an exact tie); the classifier
    reads MAJOR's channels with weights ~1 and MINOR's with weights ~1e-4."""
    rng = np.random.default_rng(0)
    weight = rng.normal(0.0, 0.5, (4, 1, 3, 3)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, 4).astype(np.float32)
    classifier = rng.normal(0.0, 1.0, (10, 8)).astype(np.float32)
    classifier[:, :4] *= 1e-4  # the Concat puts MINOR's channels first
    initializers = [numpy_helper.from_array(array, name) for name, array in
                    (("w_minor", weight), ("b_minor", bias), ("w_major", weight.copy()), ("b_major", bias.copy()),
                     ("classifier_w", classifier), ("classifier_b", np.zeros(10, np.float32)))]
    nodes = [helper.make_node("Conv", ["input", "w_minor", "b_minor"], ["y_minor"], name=MINOR, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["input", "w_major", "b_major"], ["y_major"], name=MAJOR, pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["y_minor", "y_major"], ["joined"], name="concat", axis=1),
             helper.make_node("GlobalAveragePool", ["joined"], ["pooled"], name="pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "classifier_w", "classifier_b"], ["logits"], name="classifier",
                              transB=1)]
    graph = helper.make_graph(nodes, "ties", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_of_two_nodes_with_equal_local_noise_the_one_the_logits_feel_ranks_first(tmp_path):
    model = _two_branch_model(tmp_path / "ties.onnx")
    images = np.random.default_rng(1).normal(0.0, 1.0, (32, 1, 8, 8)).astype(np.float32)
    settings = QuantSettings().resolved()[0]
    cache = tmp_path / "ranges.json"
    calibrate(model, images, "input", settings.with_method("minmax"), cache)
    op_types = quantized_op_types("qoperator")
    twin = quantize_static_int8(model, tmp_path / "twin.qdq.onnx", settings, cache, quant_format="qdq",
                                op_types=op_types)

    local = {score.node: score for score in score_nodes(model, twin, images, "input", op_types)}
    assert local[MINOR].sqnr_db == local[MAJOR].sqnr_db  # the same noise, to the last digit
    by_name = [name for name in (score.node for score in score_nodes(model, twin, images, "input", op_types))
               if name in (MINOR, MAJOR)]
    assert by_name == [MINOR, MAJOR]

    ranking, record = rank_nodes(model, twin, images, "input", op_types)
    order = [score.node for score in ranking]
    assert order.index(MAJOR) < order.index(MINOR)
    effect = {score.node: score.logit_sqnr_db for score in ranking}
    assert effect[MAJOR] + 40 < effect[MINOR]  # a 1e-4 gain is 80 dB: measured 40.3 against 120.3 dB
    group = next(group for group in record["groups"] if MAJOR in group["nodes"])
    assert group["reordered"] and group["nodes"].index(MAJOR) < group["nodes"].index(MINOR)
    assert group["logit_sqnr_db"] == sorted(group["logit_sqnr_db"])
    assert record["tolerance_db"] == TIE_DB and record["measured_nodes"] <= TIE_BREAK_CAP
    assert record["images"] == len(images) and record["groups_not_measured"] == 0

    # bounded: a group larger than the cap is not measured, keeps the name order and is counted
    capped, capped_record = rank_nodes(model, twin, images, "input", op_types, cap=1)
    order = [score.node for score in capped]
    assert order.index(MINOR) < order.index(MAJOR) and capped_record["groups"] == []
    assert capped_record["groups_not_measured"] >= 1 and capped_record["measured_nodes"] == 0
    assert all(score.logit_sqnr_db is None for score in capped)


def test_ties_in_a_trained_zoo_models_ranking_follow_the_logits(broken_int8_checkpoint, tmp_path):
    result = run_export(ExportRequest(model="hps-06-0.25x", checkpoint=broken_int8_checkpoint,
                                      artifacts=tmp_path, eval_count=SMALL_EVAL))
    quantization = result.manifest.to_json()["quantization"]
    record = quantization["tie_break"]
    limit = -(-quantization["quantizable_nodes"] // 2)
    assert record["head_nodes"] == limit and record["measured_nodes"] <= record["cap_nodes"] == TIE_BREAK_CAP
    groups = record["groups"]
    assert groups  # measured: 8 groups, 17 nodes, on this checkpoint
    assert any(group["reordered"] for group in groups)  # measured: 4 of them not in name order
    ranked = [entry["node"] for entry in quantization["sensitivity"]]
    for group in groups:
        assert len(group["nodes"]) >= 2
        assert max(group["local_sqnr_db"]) - min(group["local_sqnr_db"]) <= TIE_DB + 1e-9
        assert group["logit_sqnr_db"] == sorted(group["logit_sqnr_db"])  # the node the logits feel most first
        shown = [node for node in group["nodes"] if node in ranked]
        if shown:  # the ranking the gate searched holds the group in this order, side by side
            start = ranked.index(shown[0])
            assert ranked[start:start + len(shown)] == shown
    entries = {entry["node"]: entry for entry in quantization["sensitivity"]}
    tied = {node for group in groups for node in group["nodes"]}
    assert all(("logit_sqnr_db" in entry) == (node in tied) for node, entry in entries.items())
