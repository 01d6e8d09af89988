"""The boundary rule on the host pipeline: what a library or the OS raises ends as one `error:` line naming the
file and one `hint:` line, exit 1, never an internal error. Real files, a real full disk (a tiny tmpfs) and a
real read-only mount; the CLI runs as a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import require

TOOLCHAIN = str(Path(sys.executable).with_name("toolchain"))
MODEL = "hps-06-0.25x"


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([TOOLCHAIN, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def assert_one_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit 1 with the last two stderr lines an error naming `expected` and a hint; returns the error line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert lines[-2].startswith("error: ") and lines[-1].startswith("hint: "), result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    for text in expected:
        assert text in lines[-2]
    return lines[-2]


@pytest.fixture
def foreign_onnx(tmp_path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])),
              str(path))
    return path


@pytest.mark.parametrize("kind, expected", [("garbage", "is not an ONNX model"), ("empty", "is not an ONNX model"),
                                            ("foreign", "not N x C x H x W"), ("missing", "not found")])
def test_quantize_refuses_a_corrupt_or_foreign_onnx_file_by_name(tmp_path: Path, foreign_onnx: Path, kind: str,
                                                                 expected: str) -> None:
    path = {"foreign": foreign_onnx}.get(kind, tmp_path / f"{kind}.onnx")
    if kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    result = run_cli("quantize", "--onnx", str(path), "--artifacts", str(tmp_path / "store"))
    assert_one_error(result, path.name, expected)
    assert not (tmp_path / "store").exists()


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state_dict of the model with untrained weights (a real checkpoint file, quick to make)."""
    import torch

    from toolchain.models.registry import create_model

    path = tmp_path_factory.mktemp("checkpoint") / "random.pt"
    torch.save(create_model(MODEL, 10, 1).state_dict(), path)
    return path


@pytest.mark.parametrize("kind, expected", [
    ("garbage", "not a torch.save file"), ("truncated", "truncated or corrupted"),
    ("whole model", "pickles Python objects"), ("plain text", "not a torch.save file")])
def test_export_refuses_a_corrupt_checkpoint_in_one_line(tmp_path: Path, random_checkpoint: Path, kind: str,
                                                         expected: str) -> None:
    import torch

    path = tmp_path / "checkpoint.pt"
    if kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        path.write_bytes(random_checkpoint.read_bytes()[:2000])
    elif kind == "whole model":
        torch.save(torch.nn.Linear(2, 2), path)
    else:
        path.write_text("weights = [1, 2, 3]\n")
    result = run_cli("export", "--model", MODEL, "--checkpoint", str(path), "--artifacts", str(tmp_path / "store"))
    line = assert_one_error(result, str(path), expected)
    assert len(line) < 200


@contextmanager
def tmpfs(mountpoint: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `mountpoint` (created) for the block, lazily unmounted afterwards."""
    require(os.geteuid() == 0 and shutil.which("mount") is not None, "mounting a tmpfs needs root")
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 KiB tmpfs: too small for the models an export writes."""
    with tmpfs(tmp_path / "tiny disk", "size=48k") as mountpoint:
        yield mountpoint


@pytest.mark.parametrize("full", ["artifact store", "pass cache"])
def test_export_onto_a_full_disk_names_the_file_and_leaves_nothing(tmp_path: Path, tiny_disk: Path,
                                                                   random_checkpoint: Path, full: str) -> None:
    store = tiny_disk / "store" if full == "artifact store" else tmp_path / "store"
    cache = tiny_disk / "passes" if full == "pass cache" else tmp_path / "passes"
    result = run_cli("export", "--model", MODEL, "--checkpoint", str(random_checkpoint), "--artifacts", str(store),
                     "--eval-count", "64", env={"TOOLCHAIN_PASS_CACHE": str(cache)})
    line = assert_one_error(result, f"cannot write {tiny_disk}/", "No space left on device")
    assert ".staging-" in line
    assert [path for path in tiny_disk.rglob("*") if path.is_file()] == []


def test_export_into_a_read_only_store_is_refused_before_any_work(tmp_path: Path, random_checkpoint: Path) -> None:
    with tmpfs(tmp_path / "read-only", "ro,size=64k") as mountpoint:
        result = run_cli("export", "--model", MODEL, "--checkpoint", str(random_checkpoint), "--artifacts",
                         str(mountpoint / "store"))
    assert_one_error(result, str(mountpoint), "not writable")


def _custom_op_classifier(path: Path) -> Path:
    """A valid ONNX classifier (1 x 32 x 32 in, 10 logits out) with one op from a domain onnxruntime lacks."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((1024, 10), 0.01, dtype=np.float32), "w")
    nodes = [helper.make_node("Swish", ["input"], ["act"], domain="com.example.accelerator"),
             helper.make_node("Flatten", ["act"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              ["N", 1, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example.accelerator", 1)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_a_model_with_an_op_onnxruntime_lacks_is_one_error_naming_it(tmp_path: Path) -> None:
    path = _custom_op_classifier(tmp_path / "accelerator.onnx")
    here = tmp_path / "cwd"
    here.mkdir()
    result = run_cli("quantize", "--onnx", str(path), "--no-simplify", "--calibration", "fashion-mnist",
                     "--artifacts", str(tmp_path / "store"), cwd=here)
    assert_one_error(result, "accelerator.onnx")  # the first library to meet it (ORT's shape inference) names it
    # ORT's symbolic shape inference, when incomplete, saves sym_shape_infer_temp.onnx (+ .data) into the cwd
    assert not list(here.iterdir())
    assert "custom or contrib ops" in result.stderr.strip().splitlines()[-1]
    assert not list((tmp_path / "store").glob("*/*/manifest.json"))
    from toolchain.errors import OnnxModelError
    from toolchain.evaluators.accuracy import onnx_logits

    with pytest.raises(OnnxModelError) as raised:  # every evaluator opens models through the same door
        onnx_logits(path, __import__("numpy").zeros((2, 1, 32, 32), dtype="float32"))
    assert "cannot load" in raised.value.message and "accelerator.onnx" in raised.value.message
