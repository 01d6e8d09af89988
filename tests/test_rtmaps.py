"""The RTMaps component on the host: generated for a real artifact, driven through the stand-in of RTMaps' Python API.

RTMaps is proprietary and not installed here: tests/rtmaps_standin/ imitates the part of its Python bridge
that the component uses (docs/rtmaps.md says what follows Intempora's templates and what is guessed).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.deploy import DeployArtifacts, artifact_copy
from tests.fixtures.pipeline import tree
from tests.fixtures.rtmaps import DIAGRAM, check_golden, read_golden
from tests.rtmaps_standin import diagram
from toolchain.artifacts import read_evalset, read_manifest
from toolchain.errors import ArtifactError
from toolchain.rtmaps import COMPONENT_FILES, COMPONENT_NAME, GOLDEN_NAME, write_component
from toolchain.rtmaps.component import TEMPLATE

import rtmaps.core  # noqa: E402  (the stand-in: tests.rtmaps_standin.diagram put it on sys.path)
import rtmaps.reading_policy  # noqa: E402
import rtmaps.types  # noqa: E402

TOOLCHAIN = str(Path(sys.executable).with_name("toolchain"))


@pytest.fixture
def artifact(deploy_artifacts: DeployArtifacts, tmp_path: Path) -> Path:
    return artifact_copy(deploy_artifacts.loadable_by_1_16, tmp_path / "artifacts")


@pytest.fixture
def component(artifact: Path) -> Path:
    return write_component(artifact).folder


def ties_of(artifact: Path, variant: str) -> dict[str, list[int]]:
    return dict(read_manifest(artifact).accuracy.ties.get(variant, {}))


def run_in_process(folder: Path, properties: dict[str, str] | None = None, as_ipl: bool = True,
                   channel_seq: str = "RGB", ticks: list[int] | None = None) -> dict:
    rtmaps.core.REPORTS.clear()
    golden = read_golden(folder / GOLDEN_NAME)
    graph = diagram.Diagram(str(folder / COMPONENT_NAME), properties)
    written = graph.run(diagram.golden_samples(golden, as_ipl, channel_seq), ticks)
    return {"outputs": {name: [[ts, data] for ts, data in items] for name, items in written.items()},
            "reading_policy": graph.component.reading_policy, "component": graph.component}


def test_the_component_reproduces_the_golden_int8_and_fp32_outputs_under_the_standin(artifact: Path,
                                                                                     component: Path) -> None:
    golden = read_golden(component / GOLDEN_NAME)
    assert set(golden) == {"frames", "ts", "labels", "class_id_int8", "class_id_fp32", "scores_int8", "scores_fp32"}
    assert golden["frames"].dtype == np.uint8 and golden["frames"].shape[1:] == (28, 28)
    int8 = run_in_process(component)
    assert int8["reading_policy"] == rtmaps.reading_policy.REACTIVE
    # same onnxruntime, same machine, batch 1, one thread: the logits are the host's to the bit
    check_golden(int8, golden, "int8", ties_of(artifact, "int8"))
    assert any(level == "info" and "(int8)" in text for level, text in rtmaps.core.REPORTS)
    assert int8["component"].session is None  # Death released it
    fp32 = run_in_process(component, {"model_path": str(artifact / "model.fp32.onnx"), "threads": "2"}, as_ipl=False)
    check_golden(fp32, golden, "fp32", ties_of(artifact, "fp32"), atol=1e-4)
    assert any("(fp32)" in text and "2 thread(s)" in text for _, text in rtmaps.core.REPORTS)


def test_frames_are_preprocessed_exactly_as_the_gates_eval_set_was(artifact: Path, component: Path) -> None:
    module, _ = diagram.load_component(str(component / COMPONENT_NAME))
    spec = module.CONFIG["preprocessing"]
    assert (spec["stored"], spec["pad"], spec["source"]) == ([28, 28], [2, 2, 2, 2], "manifest (inputs.evalset.geometry)")
    evalset = read_evalset(artifact / "evalset.npz")["images"]
    frames = read_golden(component / GOLDEN_NAME)["frames"]

    def fed(frame: object) -> np.ndarray:
        return module.preprocess(frame, spec)

    assert np.array_equal(np.concatenate([fed(frame) for frame in frames]), evalset)  # bit for bit
    frame, expected = frames[5], evalset[5:6]
    colour = np.repeat(frame[:, :, None], 3, axis=2)
    variants = {"float 0-1": frame.astype(np.float32) / np.float32(255.0), "H x W x 1": frame[:, :, None],
                "RGB ndarray": colour, "BGRA IplImage": rtmaps.types.IplImage(np.dstack([colour, colour[:, :, :1]]),
                                                                             "COLR", "BGRA"),
                "block-upscaled 4x3": np.kron(frame, np.ones((4, 3), dtype=np.uint8))}
    for name, variant in variants.items():
        assert np.array_equal(fed(variant), expected), name
    laid_out = np.pad(frame, 2)  # a frame of the model's input size is taken as laid out already
    assert np.array_equal(fed(laid_out), expected)
    with pytest.raises(module.FrameError, match="H x W or H x W x C"):
        fed(np.zeros((2, 28, 28, 1), dtype=np.uint8))
    with pytest.raises(module.FrameError, match="uint8 or float"):
        fed(frame.astype(np.int16))


def test_birth_refuses_a_model_whose_sha256_the_manifest_does_not_list(artifact: Path, component: Path,
                                                                      tmp_path: Path) -> None:
    edited = tmp_path / "model.int8.onnx"
    edited.write_bytes((artifact / "model.int8.onnx").read_bytes() + b"\0")
    with pytest.raises(ValueError, match=r"has sha256 [0-9a-f]{12}\.\.\., which is none of artifact") as caught:
        run_in_process(component, {"model_path": str(edited)})
    assert str(edited) in str(caught.value) and "toolchain rtmaps --artifact" in str(caught.value)
    with pytest.raises(ValueError, match="no such file"):
        run_in_process(component, {"model_path": str(tmp_path / "missing.onnx")})


def test_sampling_answers_the_newest_frame_once(component: Path) -> None:
    golden = read_golden(component / GOLDEN_NAME)
    # frames 0 and 1 arrive between two ticks (never seen); frame 2 is read on two ticks (answered once)
    ticks = [0, 0, 2] + [1] * (len(golden["ts"]) - 3)
    run = run_in_process(component, {"reading_policy": "sampling"}, ticks=ticks)
    assert run["reading_policy"] == rtmaps.reading_policy.SAMPLING
    stamps = [ts for ts, _ in run["outputs"]["class_id"]]
    assert stamps == [int(ts) for ts in golden["ts"][2:]]


def test_the_standin_command_line_runs_the_lifecycle_as_a_target_would(artifact: Path, component: Path,
                                                                      tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    finished = subprocess.run([sys.executable, str(DIAGRAM), str(component / COMPONENT_NAME),
                               str(component / GOLDEN_NAME), "--output", str(result), "--as", "array"],
                              capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    check_golden(json.loads(result.read_text()), read_golden(component / GOLDEN_NAME), "int8", ties_of(artifact, "int8"))
    broken = subprocess.run([sys.executable, str(DIAGRAM), str(component / COMPONENT_NAME),
                             str(component / GOLDEN_NAME), "--output", "-", "--property", "threads=-1"],
                            capture_output=True, text=True)
    assert broken.returncode == 1 and "threads must be 0" in json.loads(broken.stdout)["error"]


def test_manifest_text_stays_data_in_the_generated_python(artifact: Path) -> None:
    hostile = ['"""\nimport os; os.system("touch pwned")\n"""', "'); __import__('os').system('touch pwned') #",
               "\\\nx = 1", "\x1b[31mred", "T-shirt/top", "é ✓", "a", "b", "c", "d"]
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["dataset"]["class_names"] = hostile
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    source = (write_component(artifact).folder / COMPONENT_NAME).read_text()
    generated, template = ast.parse(source), ast.parse(TEMPLATE.read_text())
    # the same statements as the template: the facts are one string constant, nothing else changed
    assert ast.dump(generated).count("Constant") == ast.dump(template).count("Constant")
    assert [type(node) for node in generated.body] == [type(node) for node in template.body]
    assert source.isascii()
    assert [line[:14] for line in source.splitlines() if "pwned" in line] == ["CONFIG_JSON = "]
    module, _ = diagram.load_component(str(artifact / "rtmaps" / COMPONENT_NAME))
    assert module.CONFIG["class_names"] == hostile


def test_regenerating_gives_the_same_bytes_and_replaces_the_folder_whole(artifact: Path) -> None:
    first = write_component(artifact)
    (first.folder / "golden.npz").write_bytes(b"damaged")
    second = write_component(artifact)
    assert [item.sha256 for item in second.files] != [] and second.folder == artifact / "rtmaps"
    assert [(item.name, item.sha256) for item in first.files] == [(item.name, item.sha256) for item in second.files]
    assert sorted(path.name for path in second.folder.iterdir()) == sorted(COMPONENT_FILES)
    assert not [path for path in artifact.iterdir() if path.name.startswith(".staging-")]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TOOLCHAIN, "rtmaps", *args], capture_output=True, text=True)


def one_error(finished: subprocess.CompletedProcess, code: int = 1) -> tuple[str, str]:
    lines = finished.stderr.strip().splitlines()
    assert finished.returncode == code and len(lines) == 2, finished.stderr
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: ") and "Traceback" not in finished.stderr
    return lines[0], lines[1]


def test_cli_prints_the_paths_it_wrote(artifact: Path, tmp_path: Path) -> None:
    finished = cli("--artifact", str(artifact), "--output", str(tmp_path / "component"), "--json")
    assert finished.returncode == 0, finished.stderr
    document = json.loads(finished.stdout)
    assert document["files"] == [str(tmp_path / "component" / name) for name in COMPONENT_FILES]
    assert document["default_model_path"] == str(artifact.resolve() / "model.int8.onnx")
    assert all(Path(path).is_file() for path in document["files"])


def test_a_manifest_without_preprocessing_is_one_error_and_writes_nothing(artifact: Path) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["inputs"]["evalset"] = {"kind": "arrays", "file": "images.npz", "sha256": "0" * 64, "count": 64}
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    before = tree(artifact)
    error, hint = one_error(cli("--artifact", str(artifact)))
    assert str(artifact / "manifest.json") in error and "not recorded" in error and "calibration" in hint
    assert tree(artifact) == before


def test_a_corrupt_artifact_and_an_unwritable_output_are_one_error_each(artifact: Path, read_only_dir: Path) -> None:
    error, _ = one_error(cli("--artifact", str(artifact), "--output", str(read_only_dir / "component")))
    assert str(read_only_dir) in error and tree(read_only_dir) == []
    with open(artifact / "model.int8.onnx", "ab") as handle:
        handle.write(b"\0")
    error, hint = one_error(cli("--artifact", str(artifact)))
    assert "model.int8.onnx changed since the artifact was made" in error and "re-create" in hint
    assert not (artifact / "rtmaps").exists()
    one_error(cli("--artifact", str(artifact), "--model", "hps-06-0.25x"), code=2)


def test_an_eval_set_resized_by_pillow_is_refused_by_name(artifact: Path) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["inputs"]["evalset"]["geometry"] = {"resize": "pillow-bicubic"}
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="resized by Pillow"):
        write_component(artifact)


def test_the_component_template_and_the_standin_are_python_3_5_and_target_side_only() -> None:
    vermin = Path(sys.executable).with_name("vermin")
    files = [TEMPLATE, DIAGRAM, *sorted(DIAGRAM.parent.joinpath("rtmaps").glob("*.py"))]
    checked = subprocess.run([str(vermin), "-t=3.5-", "--no-tips", "--violations", *map(str, files)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(TEMPLATE.read_text()))
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(ast.parse(TEMPLATE.read_text()))
                 if isinstance(node, ast.ImportFrom) and node.module}
    # stdlib, numpy, onnxruntime and RTMaps only: nothing of toolchain, no Pillow or OpenCV
    assert imported == {"hashlib", "json", "os", "time", "numpy", "onnxruntime", "rtmaps"}
    assert not (TEMPLATE.parent / "__init__.py").exists()  # read as text by the host, never imported
