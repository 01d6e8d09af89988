"""INT8 logits are quantized, so two classes can tie exactly on the host; a target breaking the tie the other
way still gives the host's answer (seen on the emulated aarch64 Bluebox: one image of 64, margin exactly 0)."""

from __future__ import annotations

import numpy as np

from toolchain.bench.results import agreement
from toolchain.manifest import Manifest
from toolchain.passes.gate import _ties


def _document(predictions: list[int]) -> dict:
    return {"results": [{"variant": "int8", "threads": 1, "batch": 1, "predictions": predictions}]}


def test_a_tied_image_agrees_whichever_tied_class_the_target_picks():
    host = np.array([0, 1, 2, 3])
    ties = {"int8": {"1": [1, 4]}}
    assert agreement(_document([0, 4, 2, 3]), {"int8": host}, ties)[0].agreement_pct == 100.0
    assert agreement(_document([0, 4, 2, 3]), {"int8": host}, ties)[0].tied == 1
    assert agreement(_document([0, 5, 2, 3]), {"int8": host}, ties)[0].agreement_pct == 75.0  # not a tied class
    assert agreement(_document([0, 4, 2, 3]), {"int8": host})[0].agreement_pct == 75.0  # no ties recorded


def test_ties_are_found_exactly_and_only_where_they_are():
    int8 = np.array([[1.0, 3.0, 3.0], [0.5, 0.25, 0.0], [2.0, 2.0, 2.0]], dtype=np.float32)
    fp32 = np.array([[1.0, 3.0, 2.9999], [0.5, 0.25, 0.0], [2.0, 1.0, 0.0]], dtype=np.float32)
    assert _ties(fp32, int8) == {"ties": {"int8": {"0": [1, 2], "2": [0, 1, 2]}}}
    assert _ties(fp32, fp32) == {}


def test_the_manifest_keeps_the_ties(hps_artifact):
    document = hps_artifact.manifest.to_json()
    document["accuracy"]["ties"] = {"int8": {"3": [1, 7]}}
    assert Manifest.from_json(document).accuracy.ties == {"int8": {"3": [1, 7]}}
    assert Manifest.from_json(document).to_json()["accuracy"]["ties"] == {"int8": {"3": [1, 7]}}
