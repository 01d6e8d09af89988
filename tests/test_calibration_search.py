"""--method auto: the gate tries minmax, then percentile, then entropy, then percentile at 99.99 and 99.9, all INT8,
then the same five with the activation channels equalized, and stops at the first that passes.

When none passes, the float search runs on the best of them. Every attempt is in the manifest's decision
log (`quantization.calibration_search`) with its numbers, and `quantization.method` names the one shipped.
A pinned --method is honoured as it is.
"""

from __future__ import annotations

import pytest
import torch

from toolchain.data.imagesets import load_definition, load_image_set
from toolchain.errors import AccuracyGateError
from toolchain.graph.from_torch import export_onnx
from toolchain.pipeline import ExportRequest, quantize_with_gate, run_export
from toolchain.pipeline.config import QuantSettings
from toolchain.training.checkpoints import load_checkpoint

SMALL_EVAL = 200
# --method auto's calibrations in order, as the decision log names them: (method, percentile or None)
AUTO = [("minmax", None), ("percentile", 99.999), ("entropy", None), ("percentile", 99.99), ("percentile", 99.9)]


def _calibrations(log: list[dict]) -> list[tuple]:
    return [(attempt["method"], attempt.get("percentile")) for attempt in log]


def test_auto_calibrations_are_in_order_and_a_pinned_method_is_alone():
    attempts = QuantSettings().calibration_attempts()
    assert [(a.method, a.percentile if a.method == "percentile" else None) for a in attempts] == AUTO
    assert [a.calibration_label for a in attempts] == ["minmax", "percentile 99.999", "entropy", "percentile 99.99",
                                                       "percentile 99.9"]
    # a lower --percentile leaves out the tail percentiles that would clip less than it already does
    assert [a.percentile for a in QuantSettings(percentile=99.95).calibration_attempts()
            if a.method == "percentile"] == [99.95, 99.9]
    pinned = QuantSettings(method="percentile", percentile=99.5)
    assert pinned.calibration_attempts() == (pinned,)


def test_auto_stops_at_the_first_calibration_that_passes(trained_hps, tmp_path):
    loaded = load_checkpoint(trained_hps.checkpoint)
    definition = load_definition("fashion-mnist")
    calibration = load_image_set(definition, loaded.info.mean, loaded.info.std)
    evaluation = load_image_set(definition.eval_counterpart(300), loaded.info.mean, loaded.info.std)
    path = tmp_path / "model.fp32.onnx"
    export_onnx(loaded.model, torch.from_numpy(evaluation.images[:1]), path)
    messages: list[str] = []
    result = quantize_with_gate(path, tmp_path / "auto.onnx", QuantSettings(), calibration, evaluation, "input",
                                on_message=messages.append)
    assert result.drop_pp <= 1.0 and result.kept_float == ()
    log = result.notes["calibration_search"]
    assert [attempt["method"] for attempt in log] == ["minmax"] and log[0]["passed"]
    assert result.notes["method"] == "minmax" and not any("trying" in message for message in messages)


def test_auto_tries_every_calibration_in_order_then_keeps_nodes_in_float(broken_int8_checkpoint, tmp_path):
    result = run_export(ExportRequest(model="hps-06-0.25x", checkpoint=broken_int8_checkpoint,
                                      artifacts=tmp_path, eval_count=SMALL_EVAL))
    quantization = result.manifest.to_json()["quantization"]
    log = quantization["calibration_search"]
    # the five calibrations in the default layout, the same five with the activation channels equalized, then
    # the best one's ranges with the other format and with per-tensor weights (no recalibration)
    assert _calibrations(log[:5]) == AUTO and _calibrations(log[5:10]) == AUTO
    assert [bool(attempt.get("equalized")) for attempt in log[:10]] == [False] * 5 + [True] * 5
    assert [(attempt["format"], attempt["per_channel"]) for attempt in log] == \
        [("qoperator", True)] * 10 + [("qdq", True), ("qoperator", False)]
    best_calibration = min(log[:10], key=lambda a: a["drop_pp"])
    assert set(_calibrations(log[10:])) == set(_calibrations([best_calibration]))
    assert {bool(attempt.get("equalized")) for attempt in log[10:]} == {bool(best_calibration.get("equalized"))}
    assert all(attempt["calibration_seconds"] == 0.0 for attempt in log[10:])
    from toolchain.report.pages import _gate_rows

    labels = [row[1] for row in _gate_rows({**quantization, "max_drop_pp": 1.0})[10:12]]
    assert labels[0].endswith(", qdq") and labels[1].endswith(", per-tensor")
    assert not any(attempt["passed"] for attempt in log) and all(attempt["drop_pp"] > 1.0 for attempt in log)
    best = min(log, key=lambda attempt: attempt["drop_pp"])
    assert quantization["method"] == best["method"] and quantization["kept_float"]
    assert quantization.get("percentile") == best.get("percentile")
    assert (quantization["format"], quantization["per_channel"]) == (best["format"], best["per_channel"])
    assert quantization["steps"][0]["drop_pp"] == best["drop_pp"]  # the float search started from the best one
    assert result.manifest.to_json()["accuracy"]["drop_pp"] <= 1.0


def test_a_pinned_method_is_not_searched(tiny_hps, tmp_path):
    """At 10**4 (what equalization would repair under auto): pinned, percentile alone, then the float search."""
    from tests.fixtures.pipeline import break_int8

    broken_int8_checkpoint = break_int8(tiny_hps.checkpoint, tmp_path / "broken" / "checkpoint.pt", decades=4.0)
    request = ExportRequest(model="hps-06-0.25x", checkpoint=broken_int8_checkpoint, artifacts=tmp_path,
                            eval_count=SMALL_EVAL, quant=QuantSettings(method="percentile", max_kept_float=0), qat="off")
    with pytest.raises(AccuracyGateError) as raised:
        run_export(request)
    assert "--method auto" in raised.value.hint
    result = run_export(ExportRequest(model="hps-06-0.25x", checkpoint=broken_int8_checkpoint, artifacts=tmp_path,
                                      eval_count=SMALL_EVAL, quant=QuantSettings(method="percentile")))
    quantization = result.manifest.to_json()["quantization"]
    assert [attempt["method"] for attempt in quantization["calibration_search"]] == ["percentile"]
    assert quantization["method"] == "percentile"


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_takes_a_count_that_is_no_multiple_of_the_batch(trained_hps, tmp_path, method):
    """ORT's histogram calibrators stack equal batches: 100 images in batches of 32 (last one 4) failed."""
    import numpy as np

    from toolchain.quantization.ort import calibrate, even_batch

    assert [even_batch(n) for n in (100, 256, 97, 1, 31)] == [25, 32, 1, 1, 31]
    loaded = load_checkpoint(trained_hps.checkpoint)
    definition = load_definition("fashion-mnist")
    images = load_image_set(definition.eval_counterpart(100), loaded.info.mean, loaded.info.std).images
    path = tmp_path / "model.fp32.onnx"
    export_onnx(loaded.model, torch.from_numpy(images[:1]), path)
    cache = tmp_path / "ranges.json"
    calibrate(path, images, "input", QuantSettings(method=method), cache)
    assert cache.stat().st_size > 0 and np.isfinite(len(cache.read_text()))


def test_the_failure_hint_offers_auto_only_when_the_method_was_pinned(broken_int8_checkpoint, tmp_path):
    hints = {}
    for method in ("auto", "minmax"):
        with pytest.raises(AccuracyGateError) as failed:
            run_export(ExportRequest(model="hps-06-0.25x", checkpoint=broken_int8_checkpoint, artifacts=tmp_path,
                                     eval_count=SMALL_EVAL, qat="off",
                                     quant=QuantSettings(method=method, max_kept_float=0)))
        hints[method] = failed.value.hint
    assert "--method auto" not in hints["auto"] and "--method auto" in hints["minmax"]


def test_a_pinned_layout_is_not_searched(broken_int8_checkpoint, tmp_path):
    """--format or --per-channel/--per-tensor given: only the calibrations are searched."""
    from toolchain.cli.pipeline import _quant_options

    assert not _quant_options().layout_pinned
    assert _quant_options(quant_format="qoperator").layout_pinned and _quant_options(per_channel=True).layout_pinned
    result = run_export(ExportRequest(model="hps-06-0.25x", checkpoint=broken_int8_checkpoint, artifacts=tmp_path,
                                      eval_count=SMALL_EVAL, quant=_quant_options(per_channel=True)))
    log = result.manifest.to_json()["quantization"]["calibration_search"]
    assert [(*calibration, attempt["format"], attempt["per_channel"]) for calibration, attempt in
            zip(_calibrations(log), log)] == [(*calibration, "qoperator", True) for calibration in AUTO + AUTO]
    assert [bool(attempt.get("equalized")) for attempt in log] == [False] * 5 + [True] * 5


def test_auto_clips_rare_spikes_with_a_tail_percentile(tiny_hps, tmp_path):
    """Two of the 256 calibration images carry a 4x4 patch of hot pixels (500 where normalised pixels span about
    -0.8 to 2): rare spikes, the way a deep net's heavy-tailed activations look to a calibrator. minmax, 99.999,
    entropy and 99.99 follow them and lose ~45 points (measured, two trainings of this net: 44-49 pp); percentile
    99.9 clips them and ships with every node INT8 (-1.3 and -1.7 pp; 0.0-0.7 pp with patches of 300-700)."""
    from toolchain.data.imagesets import ImageSet

    loaded = load_checkpoint(tiny_hps.checkpoint)
    definition = load_definition("fashion-mnist")
    calibration = load_image_set(definition, loaded.info.mean, loaded.info.std)
    evaluation = load_image_set(definition.eval_counterpart(300), loaded.info.mean, loaded.info.std)
    spiked = calibration.images.copy()
    spiked[:2, :, 10:14, 10:14] = 500.0
    path = tmp_path / "model.fp32.onnx"
    export_onnx(loaded.model, torch.from_numpy(evaluation.images[:1]), path)
    messages: list[str] = []
    result = quantize_with_gate(path, tmp_path / "auto.onnx", QuantSettings(max_kept_float=0),
                                ImageSet(spiked, calibration.labels, calibration.record), evaluation, "input",
                                on_message=messages.append)
    log = result.notes["calibration_search"]
    assert _calibrations(log) == AUTO and [attempt["passed"] for attempt in log] == [False] * 4 + [True]
    assert all(attempt["drop_pp"] > 10 for attempt in log[:4])
    assert result.drop_pp <= 1.0 and result.kept_float == ()
    assert (result.notes["method"], result.notes["percentile"]) == ("percentile", 99.9)
    assert any("trying percentile 99.9 calibration" in message for message in messages)


def test_auto_equalizes_the_activation_channels_when_no_calibration_passes(tiny_hps, tmp_path):
    """break_int8 at 10**4: every calibration loses ~50 pp (one scale for channels 10**4 apart); equalized, the
    first calibration ships with every node INT8, and the decision log says so."""
    from tests.fixtures.pipeline import break_int8
    from toolchain.report.pages import _gate_rows

    broken = break_int8(tiny_hps.checkpoint, tmp_path / "broken" / "checkpoint.pt", decades=4.0)
    messages: list[str] = []
    result = run_export(ExportRequest(model="hps-06-0.25x", checkpoint=broken, artifacts=tmp_path / "store",
                                      eval_count=SMALL_EVAL, qat="off", quant=QuantSettings(max_kept_float=0)),
                        on_message=messages.append)
    manifest = result.manifest.to_json()
    quantization = manifest["quantization"]
    log = quantization["calibration_search"]
    assert _calibrations(log) == AUTO + AUTO[:1]
    assert [bool(attempt.get("equalized")) for attempt in log] == [False] * 5 + [True]
    assert all(attempt["drop_pp"] > 10 for attempt in log[:5]) and log[5]["passed"]
    assert manifest["accuracy"]["drop_pp"] <= 1.0 and quantization["kept_float"] == []
    equalization = quantization["equalization"]
    assert equalization["groups"] > 0 and equalization["channels"] > 0 and equalization["alpha"] == 0.5
    assert equalization["top1_agreement"] == 100.0  # exact: the float function is unchanged
    assert any("equalizing activation channels" in message for message in messages)
    assert any("trying equalized, minmax calibration" in message for message in messages)
    rows = _gate_rows({**quantization, "max_drop_pp": 1.0})
    assert rows[5][:2] == ["calibration", "equalized, minmax"] and rows[-1][1] == "equalized, minmax"


def test_a_bare_onnx_file_is_equalized_against_its_own_input(tiny_hps, tmp_path):
    """`quantize_with_gate` (what `toolchain optimize` builds candidates with) has no torch reference: the
    equalized graph is checked against the graph it rewrote."""
    import onnx

    from tests.fixtures.pipeline import break_int8
    from toolchain.graph.batchnorm import rewrite_batchnorm_after_relu

    broken = load_checkpoint(break_int8(tiny_hps.checkpoint, tmp_path / "broken.pt", decades=4.0))
    definition = load_definition("fashion-mnist")
    calibration = load_image_set(definition, broken.info.mean, broken.info.std)
    evaluation = load_image_set(definition.eval_counterpart(SMALL_EVAL), broken.info.mean, broken.info.std)
    path = tmp_path / "model.fp32.onnx"
    export_onnx(broken.model, torch.from_numpy(evaluation.images[:1]), path)
    model = onnx.load(str(path))
    rewrite_batchnorm_after_relu(model)  # as an artifact's model.fp32.onnx has it
    onnx.save(model, str(path))
    result = quantize_with_gate(path, tmp_path / "auto.onnx", QuantSettings(max_kept_float=0), calibration,
                                evaluation, "input")
    log = result.notes["calibration_search"]
    assert [bool(attempt.get("equalized")) for attempt in log][-1] and log[-1]["passed"]
    assert result.drop_pp <= 1.0 and result.notes["equalization"]["top1_agreement"] == 100.0
