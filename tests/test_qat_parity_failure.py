"""A QAT fine-tune whose own FP32 export fails parity: reported as QAT's doing, with the PTQ failure that led to it.

Post-training INT8 of the broken hps-06-0.25x misses the gate with no node allowed in float, so the export
fine-tunes it (real torch.ao QAT, one short epoch). The fine-tune here then leaves a NaN in the classifier,
as a fine-tune whose last step diverged does (the loss check sees only the batches before it): its ONNX
logits cannot match torch's. That is the pipeline's branch under test, not QAT itself, so the fine-tune
function is wrapped to damage its real output.
"""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.pipeline import tree
from tests.test_cli_train import assert_one_line_error, toolchain  # noqa: F401  (fixture)
from toolchain.errors import ParityError
from toolchain.pipeline import ExportRequest, run_export
from toolchain.pipeline.config import QatSettings, QuantSettings
from toolchain.training import qat

SMALL_EVAL = 200
QUICK = QatSettings(epochs=1, images=300)


@pytest.fixture
def diverging_fine_tune(monkeypatch):
    """fine_tune as it is, then a NaN in the classifier's bias of the checkpoint it wrote; the paths it wrote."""
    from toolchain.training.checkpoints import load_checkpoint, read_info, save_checkpoint

    real = qat.fine_tune
    written = []

    def fine_tune(*args, **kwargs):
        result = real(*args, **kwargs)
        loaded = load_checkpoint(result.checkpoint)
        with torch.no_grad():
            loaded.model.classifier.bias[3] = float("nan")
        info = read_info(result.checkpoint)
        info.sha256, info.created = "", ""
        save_checkpoint(loaded.model, info, result.checkpoint)
        written.append(result.checkpoint)
        return result

    monkeypatch.setattr(qat, "fine_tune", fine_tune)
    return written


def test_with_qat_first_there_is_no_ptq_failure_to_name(tiny_hps_checkpoint, diverging_fine_tune, tmp_path):
    store = tmp_path / "store"
    with pytest.raises(ParityError) as failed:
        run_export(ExportRequest(model="hps-06-0.25x", checkpoint=tiny_hps_checkpoint, artifacts=store,
                                 eval_count=SMALL_EVAL, qat="on", qat_settings=QUICK))
    assert "fails parity" in failed.value.message and "post-training" not in failed.value.message
    assert failed.value.hint == "the fine-tune broke the float network: export without --qat"
    assert not diverging_fine_tune[0].exists() and _store_files(store) == []


def _store_files(store):
    return [path for path in tree(store) if path != "<absent>"]


def test_a_fine_tune_that_fails_parity_names_qat_and_the_ptq_failure(broken_int8_checkpoint, diverging_fine_tune,
                                                                     tmp_path):
    store = tmp_path / "store"
    messages: list[str] = []
    with pytest.raises(ParityError) as failed:
        run_export(ExportRequest(model="hps-06-0.25x", checkpoint=broken_int8_checkpoint, artifacts=store,
                                 eval_count=SMALL_EVAL, quant=QuantSettings(max_kept_float=0), qat_settings=QUICK),
                   on_message=messages.append)
    message = failed.value.message
    assert message.startswith(f"quantization-aware fine-tuning (1 epoch(s)) of {broken_int8_checkpoint} gave a "
                              "checkpoint (removed) whose FP32 fails parity")
    assert "export (ONNX vs the reference)" in message and "not finite" in message  # what failed
    assert "post-training INT8 failed first: INT8 top-1 drop stays above --max-drop 1 pp" in message  # what led to it
    assert failed.value.hint.startswith("the fine-tune broke the float network: pass --no-qat and raise --max-drop")
    assert any("post-training INT8 misses the gate" in line for line in messages)
    assert len(diverging_fine_tune) == 1 and not diverging_fine_tune[0].exists()  # the fine-tune is removed
    assert _store_files(store) == []  # no qat/ folder, no artifact, no staging folder


def test_the_cli_gives_one_error_and_a_hint_and_leaves_the_store_empty(broken_int8_checkpoint, diverging_fine_tune,
                                                                       toolchain, tmp_path):  # noqa: F811
    store = tmp_path / "store"
    outcome = toolchain("export", "--model", "hps-06-0.25x", "--checkpoint", broken_int8_checkpoint,
                        "--artifacts", store, "--eval-count", SMALL_EVAL, "--max-kept-float", "0",
                        "--qat-epochs", "1", "--qat-images", "300")
    lines = outcome.stderr.strip().splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in outcome.stderr
    assert_one_line_error(type(outcome)(outcome.code, outcome.stdout, "\n".join(lines[-2:])), 1,
                          "quantization-aware fine-tuning", "post-training INT8 failed first")
    assert len(diverging_fine_tune) == 1 and not diverging_fine_tune[0].exists()
    assert _store_files(store) == []


def test_non_finite_logits_are_named_not_measured():
    import numpy as np

    from toolchain.evaluators.parity import check_parity

    reference = np.ones((3, 4), np.float32)
    candidate = reference.copy()
    candidate[1, 2] = np.inf
    with pytest.raises(ParityError) as failed:
        check_parity(reference, candidate, 1e-4, 1e-5, "export")
    assert failed.value.message == ("export: logits are not finite (NaN or inf) on 1 of 3 eval images, first on "
                                    "image 1 (the checked model's)")
    assert "non-finite weights" in failed.value.hint


def test_any_other_failure_after_the_fine_tune_leaves_the_store_as_it_was(tiny_hps_checkpoint, monkeypatch, tmp_path):
    """The fine-tune's export fails for another reason (here its checkpoint is cut short on disk): the fresh
    fine-tune is removed too, and the error is the real one."""
    from toolchain.errors import CheckpointError

    real, written = qat.fine_tune, []

    def fine_tune(*args, **kwargs):
        result = real(*args, **kwargs)
        data = result.checkpoint.read_bytes()
        result.checkpoint.write_bytes(data[: len(data) // 2])
        written.append(result.checkpoint)
        return result

    monkeypatch.setattr(qat, "fine_tune", fine_tune)
    store = tmp_path / "store"
    with pytest.raises(CheckpointError):
        run_export(ExportRequest(model="hps-06-0.25x", checkpoint=tiny_hps_checkpoint, artifacts=store,
                                 eval_count=SMALL_EVAL, qat="on", qat_settings=QUICK))
    assert written and not written[0].exists() and _store_files(store) == []
