"""Writing the RTMaps component of an artifact: the component file, its golden vectors and a README.

    rtmaps_classifier.py   the template (toolchain/rtmaps/target/, read as text, never imported here) with the
                           artifact's facts as one JSON string literal (repr of json.dumps: manifest text
                           stays data, whatever it holds)
    golden.npz             frames (uint8, the dataset's stored size) made back from the eval set, their
                           timestamps, labels, and the host's answers: the artifact's own top-1 per variant
                           (evalset.npz pred_int8 / pred_fp32) and onnxruntime's logits of each image
    README.md              how to load it in RTMaps Studio

The files are deterministic (no time stamps), so an unchanged redeploy sends nothing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.artifacts import EVALSET_NAME, FP32_NAME, INT8_NAME, Artifact, ArtifactFile, load_artifact, read_evalset
from toolchain.errors import ArtifactError, UsageError
from toolchain.fsutil import current_umask, staging_folder
from toolchain.hashing import sha256_file
from toolchain.rtmaps.preprocessing import Preprocessing, frames_of, preprocessing_of

COMPONENT_NAME = "rtmaps_classifier.py"
GOLDEN_NAME = "golden.npz"
README_NAME = "README.md"
# in upload order: the component last, so that a component in place has its golden vectors beside it
COMPONENT_FILES = (GOLDEN_NAME, README_NAME, COMPONENT_NAME)
DEFAULT_FOLDER = "rtmaps"
CONFIG_SCHEMA = "toolchain.rtmaps/1"
TEMPLATE = Path(__file__).resolve().parent / "target" / COMPONENT_NAME
_PLACEHOLDER = 'CONFIG_JSON = "{}"\n'
VARIANTS = {INT8_NAME: "int8", FP32_NAME: "fp32"}
# RTMaps time stamps are microseconds; the golden frames come at 25 frames per second
FRAME_PERIOD_US, FIRST_TS_US = 40_000, 1_000_000
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ComponentFiles:
    """What `write_component` wrote: the folder, its files, the model path the component opens by default."""

    folder: Path
    files: tuple[ArtifactFile, ...]
    default_model_path: str
    preprocessing: Preprocessing

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "files": [str(item.path) for item in self.files],
                "default_model_path": self.default_model_path, "preprocessing": self.preprocessing.to_json()}


def _host_logits(model: Path, images: np.ndarray, input_name: str) -> np.ndarray:
    """onnxruntime's logits of each image, one batch-1 run per image (as the component runs them)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        rows = [session.run(None, {input_name: images[index:index + 1]})[0].reshape(-1)
                for index in range(images.shape[0])]
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ArtifactError(f"onnxruntime cannot run {model}: {str(exc).strip().splitlines()[0][:300]}",
                            "re-create the artifact (toolchain export)") from None
    return np.stack(rows).astype(np.float32)


def golden_vectors(artifact: Artifact, spec: Preprocessing) -> dict[str, np.ndarray]:
    """The component's golden inputs and outputs, from the artifact's eval set and models."""
    evalset_path = artifact.directory / EVALSET_NAME
    arrays = read_evalset(evalset_path)
    missing = [name for name in ("images", "labels", "pred_int8", "pred_fp32") if name not in arrays]
    if missing:
        raise ArtifactError(f"{evalset_path} has no {', '.join(missing)}", "re-create the artifact (toolchain export)")
    images = np.ascontiguousarray(arrays["images"], dtype=np.float32)
    frames = frames_of(images, spec, str(evalset_path))
    count = images.shape[0]
    name = artifact.manifest.input_name
    return {"frames": frames, "ts": FIRST_TS_US + FRAME_PERIOD_US * np.arange(count, dtype=np.int64),
            "labels": arrays["labels"].astype(np.int64),
            "class_id_int8": arrays["pred_int8"].astype(np.int64), "class_id_fp32": arrays["pred_fp32"].astype(np.int64),
            "scores_int8": _host_logits(artifact.directory / INT8_NAME, images, name),
            "scores_fp32": _host_logits(artifact.directory / FP32_NAME, images, name)}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz (what np.load reads) whose bytes depend on the arrays only (np.savez stamps the time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def component_config(artifact: Artifact, spec: Preprocessing, model_dir: str, num_classes: int) -> dict[str, Any]:
    """The component's CONFIG: identity, models with their sha256, the default model, I/O names, preprocessing."""
    manifest = artifact.manifest
    names = manifest.dataset.class_names
    class_names = [str(item) for item in names] if names and len(names) == num_classes else \
        [f"class{index}" for index in range(num_classes)]
    return {"schema": CONFIG_SCHEMA, "artifact_id": manifest.artifact_id, "model": manifest.model,
            "dataset": manifest.dataset.name, "class_names": class_names, "input_name": manifest.input_name,
            "output_name": manifest.output_name,
            "models": {name: {"sha256": manifest.files[name].sha256, "variant": variant}
                       for name, variant in VARIANTS.items()},
            "default_model_path": f"{model_dir.rstrip('/')}/{INT8_NAME}", "preprocessing": spec.to_json()}


def component_source(config: dict[str, Any]) -> str:
    """The template with `config` as its CONFIG_JSON: one string literal, so no manifest text can become code."""
    try:
        template = TEMPLATE.read_text(encoding="utf-8")
    except OSError as exc:
        raise ArtifactError(f"cannot read the RTMaps component template {TEMPLATE}: {exc.strerror or exc}",
                            "reinstall toolchain") from None
    if template.count(_PLACEHOLDER) != 1:
        raise ArtifactError(f"the RTMaps component template {TEMPLATE} has no single {_PLACEHOLDER.strip()!r} line",
                            "reinstall toolchain")
    literal = repr(json.dumps(config, sort_keys=True, ensure_ascii=True, allow_nan=False))
    return template.replace(_PLACEHOLDER, f"CONFIG_JSON = {literal}\n")


def readme_text(config: dict[str, Any], spec: Preprocessing, count: int) -> str:
    """README.md of the component folder: what it is and how to load it in RTMaps Studio."""
    stored = f"{spec.stored[0]}x{spec.stored[1]}"
    padding = "no padding" if not any(spec.pad) else f"padded by {list(spec.pad)} (top, bottom, left, right) with {spec.pad_value}"
    return f"""# RTMaps component of {config['model']} (artifact {config['artifact_id']})

`{COMPONENT_NAME}` is a component for RTMaps' Python bridge (`class rtmaps_python(BaseComponent)`), written by
`toolchain rtmaps`. It needs only numpy and onnxruntime in the Python that RTMaps' Python bridge runs.

## Load it in RTMaps Studio

1. Make numpy and onnxruntime importable by the bridge's Python (install them into it, or point the
   bridge's Python executable property at an environment that has them; on a board provisioned by
   `toolchain deploy`, that is the `runtime/onnxruntime-*` folder of the work directory: add it to PYTHONPATH).
2. Drag a Python bridge component (package `rtmaps_python`) into the diagram, set its Python file property to
   this folder's `{COMPONENT_NAME}`; the class it loads is `rtmaps_python`.
3. Connect a camera, a player or any component that writes images (IplImage, or numpy arrays H x W or
   H x W x C, uint8 0-255 or float 0-1) to the input `image`.
4. Properties: `model_path` (default `{config['default_model_path']}`; `model.fp32.onnx` beside it for FP32;
   its sha256 is checked against the artifact's manifest at Birth), `threads` (onnxruntime intra-op
   threads, 0 = onnxruntime's default), `reading_policy` (`reactive`: one Core per frame; `sampling`).
5. Outputs, each stamped with its frame's timestamp: `class_id` (INTEGER32), `scores` (the
   {len(config['class_names'])} logits, FLOAT32), `inference_ms` (FLOAT64: the onnxruntime run only).

## Preprocessing (the eval set's, read from the manifest: {spec.source})

{spec.channels} channel(s), model input {spec.height}x{spec.width}; frames of the stored size {stored} are
{padding}; uint8 / 255, then (x - mean) / std with mean {list(spec.mean)}, std {list(spec.std)}. BGR and RGBA
frames are reordered, colour becomes grey with Pillow's luma weights, grey becomes colour by copying. A frame of
the model's input size is taken as laid out already; any other size is first resampled by pixel area
to {stored}, a step the eval set never needed.

## Golden vectors

`{GOLDEN_NAME}`: `frames` ({count} uint8 frames made back from the artifact's eval set), `ts` (their time
stamps, microseconds), `labels`, and the expected answers per variant: `class_id_int8` / `class_id_fp32`
(the artifact's top-1 on the host) and `scores_int8` / `scores_fp32` (onnxruntime's logits on the host).
The toolchain's tests run this component on them through a stand-in of RTMaps' Python API (RTMaps is
proprietary and not installed there); see docs/rtmaps.md in the toolchain repository.
"""


def component_files(artifact: Artifact, model_dir: str, folder: Path) -> tuple[tuple[ArtifactFile, ...], Preprocessing]:
    """Write the component's files into `folder` (which exists) for a model folder `model_dir` on its machine."""
    where = str(artifact.directory / "manifest.json")
    spec = preprocessing_of(artifact.manifest, where)
    golden = golden_vectors(artifact, spec)
    config = component_config(artifact, spec, model_dir, int(golden["scores_int8"].shape[1]))
    contents = {GOLDEN_NAME: npz_bytes(golden), README_NAME: readme_text(config, spec, len(golden["ts"])).encode(),
                COMPONENT_NAME: component_source(config).encode("utf-8")}
    files = []
    for name in COMPONENT_FILES:
        path = folder / name
        path.write_bytes(contents[name])
        files.append(ArtifactFile(name, path, sha256_file(path), path.stat().st_size))
    return tuple(files), spec


def _replaceable(output: Path) -> None:
    if not output.exists():
        return
    if not output.is_dir():
        raise UsageError(f"--output {output} is a file", "pass a folder (it is created)")
    others = sorted(entry.name for entry in output.iterdir() if entry.name not in COMPONENT_FILES)
    if others:
        shown = ", ".join(repr(name) for name in others[:3]) + (", ..." if len(others) > 3 else "")
        raise UsageError(f"--output {output} holds other files ({shown})",
                         "pass an empty or new folder, or the folder of an earlier `toolchain rtmaps`")


def write_component(artifact_dir: Path | Artifact, output: Path | None = None) -> ComponentFiles:
    """The component of an artifact in `output` (default: rtmaps/ in the artifact folder), replaced whole.

    Built in a staging folder beside `output` and renamed into place, so a failure leaves the folder as it was.
    The component opens the artifact's INT8 model by its absolute path here.
    """
    artifact = load_artifact(artifact_dir)
    output = (output or artifact.directory / DEFAULT_FOLDER).expanduser().absolute()
    _replaceable(output)
    model_dir = str(artifact.directory.resolve())
    with staging_folder(output.parent, "--output") as staging:
        files, spec = component_files(artifact, model_dir, staging)
        staging.chmod(0o777 & ~current_umask())  # mkdtemp made it private; the component folder is as readable as any
        previous = output.with_name(f"{staging.name}-previous")
        try:
            if output.exists():
                os.rename(output, previous)
            os.rename(staging, output)
        except OSError as exc:
            if previous.exists() and not output.exists():
                os.rename(previous, output)
            raise ArtifactError(f"cannot move the component into {output}: {exc.strerror or exc}",
                                "check the folder's permissions and rerun") from None
        shutil.rmtree(previous, ignore_errors=True)
    placed = tuple(ArtifactFile(item.name, output / item.name, item.sha256, item.size) for item in files)
    return ComponentFiles(output, placed, f"{model_dir}/{INT8_NAME}", spec)
