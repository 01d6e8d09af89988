"""Checkpoints: state_dict + sidecar round trip, safe loading, clear errors for the wrong file."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.fixtures.data import assert_clear_error
from toolchain.training.checkpoints import (CheckpointInfo, find_latest_checkpoint, load_checkpoint, read_info,
                                   save_checkpoint)
from toolchain.errors import CheckpointError, UnknownModelError
from toolchain.hashing import sha256_file
from toolchain.models import create_model


def _info(model: str = "hps-06-0.25x", **changes) -> CheckpointInfo:
    values = dict(model=model, dataset="fashion-mnist", num_classes=10, in_channels=1, input_size=32,
                  class_names=[f"c{k}" for k in range(10)], mean=[0.286], std=[0.353], epoch=3, epochs=5,
                  metrics={"test_top1": 12.5})
    values.update(changes)
    return CheckpointInfo(**values)


def test_save_and_load_round_trip_the_weights_and_the_sidecar(tmp_path):
    torch.manual_seed(0)
    model = create_model("hps-06-0.25x", num_classes=10, in_channels=1)
    path = tmp_path / "checkpoint.pt"

    saved = save_checkpoint(model, _info(), path)
    loaded = load_checkpoint(path)

    assert saved.sha256 == sha256_file(path) == loaded.sha256
    assert loaded.info == read_info(path)
    assert (loaded.info.epoch, loaded.info.metrics, loaded.info.std) == (3, {"test_top1": 12.5}, [0.353])
    assert loaded.spec.name == "hps-06-0.25x" and not loaded.model.training
    original = model.state_dict()
    assert all(torch.equal(original[k], v) for k, v in loaded.model.state_dict().items())
    model.eval()
    images = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(images), loaded.model(images))


def test_checkpoint_file_holds_only_a_state_dict(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(create_model("hps-06-0.25x", 10, 1), _info(), path)
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, dict) and all(isinstance(v, torch.Tensor) for v in raw.values())


def test_checkpoint_of_another_architecture_names_the_first_mismatches(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(create_model("hps-06-0.25x", 10, 1).state_dict(), path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, model_name="hps-06-0.5x")
    assert_clear_error(caught.value, "does not fit hps-06-0.5x", "model expects", "more)")
    assert "--model" in caught.value.hint


def test_checkpoint_of_another_family_lists_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(create_model("hps-06-0.25x", 10, 1).state_dict(), path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, model_name="squeezenet-v1.0")
    assert_clear_error(caught.value, "does not fit squeezenet-v1.0", "missing ")


def test_sidecar_naming_another_model_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(create_model("hps-06-0.25x", 10, 1), _info(), path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, model_name="shallow-09-0.5x")
    assert_clear_error(caught.value, "is for hps-06-0.25x, not shallow-09-0.5x")


def test_state_dict_without_sidecar_needs_a_model_name(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(create_model("hps-06-0.25x", 10, 1).state_dict(), path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_clear_error(caught.value, "has no sidecar")
    loaded = load_checkpoint(path, model_name="hps-06-0.25x")
    assert loaded.info is None and loaded.model(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_wrapped_and_data_parallel_state_dicts_are_accepted(tmp_path):
    state = create_model("hps-06-0.25x", 7, 3).state_dict()
    path = tmp_path / "wrapped.pt"
    torch.save({"epoch": 4, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = load_checkpoint(path, model_name="hps-06-0.25x")
    # classes and channels are read off the weights
    assert loaded.model(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


def test_whole_pickled_model_is_refused_by_weights_only_loading(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(create_model("hps-06-0.25x", 10, 1), path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, model_name="hps-06-0.25x")
    assert_clear_error(caught.value, str(path))
    assert "weights_only" in caught.value.hint


@pytest.mark.parametrize("content", [b"", b"plain text\n", b"PK\x03\x04 broken zip"])
def test_file_that_is_not_a_checkpoint_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, model_name="hps-06-0.25x")
    assert_clear_error(caught.value, "cannot load checkpoint")


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "nope.pt", model_name="hps-06-0.25x")
    assert_clear_error(caught.value, "checkpoint not found", "nope.pt")


def test_unknown_model_name_suggests_the_closest(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(create_model("hps-06-0.25x", 10, 1).state_dict(), path)
    with pytest.raises(UnknownModelError) as caught:
        load_checkpoint(path, model_name="hsp-06-0.5x")
    assert_clear_error(caught.value, "unknown model 'hsp-06-0.5x'")
    assert "hps-06" in caught.value.hint


def test_checkpoint_replaced_after_training_no_longer_matches_its_sidecar(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(create_model("hps-06-0.25x", 10, 1), _info(), path)
    torch.save(create_model("hps-06-0.25x", 10, 1).state_dict(), path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_clear_error(caught.value, "sha256 differs")


def test_corrupt_sidecar_is_a_one_line_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(create_model("hps-06-0.25x", 10, 1), _info(), path)
    path.with_suffix(".json").write_text("{ not json")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_clear_error(caught.value, "unreadable checkpoint sidecar")
    path.with_suffix(".json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_clear_error(caught.value, "not a toolchain checkpoint sidecar")


def test_latest_checkpoint_is_the_newest_run_of_that_model_and_dataset(tmp_path):
    runs = tmp_path / "train" / "hps-06-0.25x" / "fashion-mnist"
    model = create_model("hps-06-0.25x", 10, 1)
    for name, created in (("b-older", "2026-01-01T00:00:00+00:00"), ("a-newer", "2026-02-01T00:00:00+00:00")):
        save_checkpoint(model, _info(created=created), runs / name / "checkpoint.pt")
    save_checkpoint(model, _info(created="2027-01-01T00:00:00+00:00"),
                    tmp_path / "train" / "hps-06-0.25x" / "cifar10" / "x" / "checkpoint.pt")

    newest = find_latest_checkpoint(tmp_path, "HPS-06-0.25x", "fashion-mnist")
    assert newest == runs / "a-newer" / "checkpoint.pt"
    assert find_latest_checkpoint(tmp_path, "hps-06-0.5x", "fashion-mnist") is None


def test_a_finished_run_wins_over_a_newer_one_that_stopped_early(tmp_path):
    runs = tmp_path / "train" / "hps-06-0.25x" / "fashion-mnist"
    model = create_model("hps-06-0.25x", 10, 1)
    save_checkpoint(model, _info(epoch=5, epochs=5, created="2026-01-01T00:00:00+00:00"), runs / "done" / "checkpoint.pt")
    save_checkpoint(model, _info(epoch=1, epochs=5, created="2026-03-01T00:00:00+00:00"), runs / "cut" / "checkpoint.pt")
    assert find_latest_checkpoint(tmp_path, "hps-06-0.25x", "fashion-mnist") == runs / "done" / "checkpoint.pt"
    save_checkpoint(model, _info(epoch=2, epochs=2, created="2026-04-01T00:00:00+00:00"), runs / "new" / "checkpoint.pt")
    assert find_latest_checkpoint(tmp_path, "hps-06-0.25x", "fashion-mnist") == runs / "new" / "checkpoint.pt"


def test_saving_replaces_the_previous_checkpoint_atomically(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(create_model("hps-06-0.25x", 10, 1), _info(epoch=1), path)
    before = os.stat(path).st_ino
    save_checkpoint(create_model("hps-06-0.25x", 10, 1), _info(epoch=2), path)
    assert os.stat(path).st_ino != before  # renamed into place, never rewritten in place
    assert read_info(path).epoch == 2 and load_checkpoint(path).info.epoch == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
