"""`toolchain train`, `toolchain evaluate` and `toolchain models` through the real entry point:
data on stdout, messages on stderr, one-line errors with a hint, no traceback."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, require
from toolchain.cli.main import run
from toolchain.training.loop import TrainConfig, TrainProgress, train_model


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def toolchain(capsys):
    """Run `toolchain ARGS...` in this process (the console-script function itself)."""
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
    assert "Traceback" not in outcome.stderr and outcome.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


TINY_ARGS = ("--model", "hps-06-0.25x", "--epochs", "2", "--batch-size", "32", "--train-limit", "256",
             "--eval-limit", "128")


def test_train_json_then_evaluate_the_checkpoint(toolchain, tmp_path, fashion_mnist_root):
    trained = toolchain("train", *TINY_ARGS, "--data-dir", fashion_mnist_root, "--artifacts", tmp_path,
                        "--json")
    assert trained.code == 0, trained.stderr
    summary = json.loads(trained.stdout)
    checkpoint = Path(summary["checkpoint"])
    assert checkpoint.parent.parent == tmp_path / "train" / "hps-06-0.25x" / "fashion-mnist"
    assert [row["epoch"] for row in summary["history"]] == [1, 2]
    epoch_lines = [line for line in trained.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and "test loss" in epoch_lines[1] and "img/s" in epoch_lines[1]
    assert "SGD lr=0.1 momentum=0.9 nesterov=True weight_decay=0.0005" in trained.stderr

    evaluated = toolchain("evaluate", "--checkpoint", checkpoint, "--limit", "128", "--json")
    assert evaluated.code == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["top1"] == summary["history"][-1]["test_top1"] and result["count"] == 128
    assert (result["model"], result["dataset"], result["top5"]) == ("hps-06-0.25x", "fashion-mnist", None)

    newest = toolchain("evaluate", "--model", "hps-06-0.25x", "--artifacts", tmp_path, "--limit", "128",
                       "--json")
    assert json.loads(newest.stdout)["checkpoint"] == str(checkpoint)


def test_evaluate_prints_a_table_on_stdout(toolchain, tiny_run):
    outcome = toolchain("evaluate", "-c", tiny_run.checkpoint, "--limit", "64")
    assert outcome.code == 0 and outcome.stderr == ""
    assert "top-1 %" in outcome.stdout and str(tiny_run.checkpoint) in outcome.stdout


def test_train_resumes_an_interrupted_run_from_its_folder(toolchain, tmp_path):
    config = TrainConfig(model="hps-06-0.25x", dataset="synthetic", epochs=2, train_limit=64, eval_limit=32,
                         run_dir=tmp_path / "run")

    def stop_after_epoch_1(event: TrainProgress) -> None:
        if event.phase == "epoch":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(config, on_progress=stop_after_epoch_1)
    resumed = toolchain("train", "--resume", tmp_path / "run", "--json")  # nothing retyped
    assert resumed.code == 0, resumed.stderr
    assert "resuming after epoch 1 of hps-06-0.25x" in resumed.stderr and "epoch 2/2" in resumed.stderr
    assert [row["epoch"] for row in json.loads(resumed.stdout)["history"]] == [1, 2]

    finished = toolchain("train", "--resume", tmp_path / "run")
    assert_one_line_error(finished, 1, "already finished (2 of 2 epochs)")
    changed = toolchain("train", "--resume", tmp_path / "run", "--batch-size", "16")
    assert_one_line_error(changed, 1, "continues a run with --batch-size 128, not 16")


def test_unknown_model_exits_2_with_the_closest_names(toolchain):
    outcome = toolchain("train", "--model", "hps-06-0.5", "--dataset", "synthetic")
    assert_one_line_error(outcome, 2, "unknown model 'hps-06-0.5'")
    assert "hps-06-0.5x" in outcome.stderr


def test_models_with_an_unknown_name_suggests_the_closest(toolchain):
    outcome = toolchain("models", "hsp-06-1x")
    assert_one_line_error(outcome, 2, "unknown model 'hsp-06-1x'")
    assert "did you mean hps-06-1x" in outcome.stderr
    listing = toolchain("models", "hps-06*", "--json")
    assert listing.code == 0 and {"hps-06-1x"} <= {m["name"] for m in json.loads(listing.stdout)}


def test_missing_dataset_folder_names_the_path(toolchain, tmp_path):
    outcome = toolchain("train", "-m", "hps-06-0.25x", "--data-dir", tmp_path / "none",
                        "--artifacts", tmp_path)
    assert_one_line_error(outcome, 1, f"dataset folder not found: {tmp_path / 'none'}")


def test_malformed_cifar_folder_is_a_one_line_error(toolchain, cifar10_folder, tmp_path):
    (cifar10_folder.folder / "data_batch_2").write_bytes(b"\x80\x02garbage")
    outcome = toolchain("train", "-m", "hps-06-0.25x", "-d", "cifar10", "--data-dir", cifar10_folder.root,
                        "--artifacts", tmp_path)
    assert_one_line_error(outcome, 1, "malformed CIFAR batch", "data_batch_2")


@pytest.mark.parametrize("args, code, fragment", [
    (("--dataset", "synthetic"), 2, "--model is required"),
    (("-m", "hps-06-0.25x", "--optimizer", "adamm"), 2, "unknown optimizer 'adamm'"),
    (("-m", "hps-06-0.25x", "--milestones", "0.3,x"), 2, "--milestones must be comma-separated fractions"),
    (("-m", "hps-06-0.25x", "--momentum", "0"), 2, "Nesterov momentum needs a momentum above 0"),
    (("-m", "hps-06-0.25x", "-d", "cifar"), 1, "unknown dataset 'cifar'"),
    (("--resume", "/nonexistent/run"), 1, "resume file not found"),
])
def test_bad_train_options_are_one_line_errors(toolchain, tmp_path, args, code, fragment):
    assert_one_line_error(toolchain("train", *args, "--artifacts", tmp_path), code, fragment)


def test_evaluate_checkpoint_of_another_architecture(toolchain, tiny_checkpoint):
    bare = tiny_checkpoint.with_name("weights.pt")
    tiny_checkpoint.rename(bare)
    outcome = toolchain("evaluate", "-c", bare, "--model", "hps-06-0.5x", "-d", "fashion-mnist")
    assert_one_line_error(outcome, 1, "does not fit hps-06-0.5x", "stem.conv.weight is [16, 1, 3, 3]")


@pytest.mark.parametrize("args, code, fragment", [
    ((), 2, "pass --checkpoint PATH"),
    (("-c", "/nonexistent/checkpoint.pt"), 1, "checkpoint not found"),
    (("-m", "hps-06-0.25x", "--artifacts", "/nonexistent"), 1, "no trained checkpoint of hps-06-0.25x"),
])
def test_bad_evaluate_options_are_one_line_errors(toolchain, args, code, fragment):
    assert_one_line_error(toolchain("evaluate", *args), code, fragment)


def test_evaluate_a_sidecar_less_state_dict_needs_the_dataset(toolchain, tiny_checkpoint):
    tiny_checkpoint.with_suffix(".json").unlink()
    outcome = toolchain("evaluate", "-c", tiny_checkpoint, "--model", "hps-06-0.25x")
    assert_one_line_error(outcome, 1, "no sidecar naming its dataset")


def test_real_process_error_has_no_traceback_and_debug_shows_one(tmp_path):
    script = REPO / ".venv" / "bin" / "toolchain"
    require(script.is_file(), "the toolchain console script is not installed (scripts/bootstrap installs it)")
    missing = tmp_path / "missing.pt"
    plain = subprocess.run([script, "evaluate", "-c", missing], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.splitlines() == [f"error: checkpoint not found: {missing}",
                                         "hint: pass a .pt file written by `toolchain train` or "
                                         "torch.save(state_dict)"]
    debug = subprocess.run([script, "--debug", "evaluate", "-c", missing], capture_output=True, text=True,
                           timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "CheckpointError" in debug.stderr
