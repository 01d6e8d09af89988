"""Calibration and eval sets: which labeled images, drawn how, preprocessed how.

A calibration set is defined by a small TOML file under ``calibration/`` (or anywhere, by path)::

    dataset = "fashion-mnist"   # a name `toolchain.data.load_dataset` knows
    split = "train"             # the eval set always comes from "test": disjoint by construction
    count = 256                 # images, drawn at random ...
    seed = 0                    # ... with this seed
    preprocessing = "normalize" # (x / 255 - mean) / std, mean/std from the checkpoint (else the dataset's)
                                # or "scale": x / 255

optional: ``mean = [..]`` / ``std = [..]`` (override), ``data_dir = "..."`` (dataset folder).
The eval set that judges accuracy is the same definition on the test split (`eval_counterpart`).
Images already preprocessed can be given as a ``.npy`` / ``.npz`` file (float32 N x C x H x W,
``labels`` in the .npz for an eval set).

Parsing definitions imports neither torch nor onnx: the artifact hash of a cached run is computed
from them in a fraction of a second.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from toolchain.errors import CalibrationError, UsageError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CALIBRATION_DIR = Path(__file__).resolve().parents[2] / "calibration"
PREPROCESSING = ("normalize", "scale")
EVAL_SPLIT = "test"
DEFAULT_EVAL_COUNT = 500
DEFAULT_EVAL_SEED = 0
ARRAY_SUFFIXES = (".npy", ".npz")
_REQUIRED = ("dataset", "split", "count")
_OPTIONAL = ("seed", "preprocessing", "mean", "std", "data_dir", "description")


@dataclass(frozen=True)
class ImageSetDefinition:
    """A set of dataset images: where from, how many, which ones (seed), how preprocessed."""

    name: str
    dataset: str
    split: str
    count: int
    seed: int = 0
    preprocessing: str = "normalize"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    data_dir: str | None = None
    description: str = ""
    source: str = field(default="", compare=False)

    def content(self) -> dict[str, Any]:
        """What decides the images (hashed into the artifact id; the file's location does not count)."""
        data = asdict(self)
        data.pop("source")
        data.pop("description")
        data["mean"] = list(self.mean) if self.mean is not None else None
        data["std"] = list(self.std) if self.std is not None else None
        return data

    def eval_counterpart(self, count: int = DEFAULT_EVAL_COUNT, seed: int = DEFAULT_EVAL_SEED
                         ) -> "ImageSetDefinition":
        """The eval set of this calibration set: same dataset and preprocessing, the test split."""
        if self.split == EVAL_SPLIT:
            raise CalibrationError(f"calibration set {self.name} draws from the {EVAL_SPLIT} split, "
                                   "which the eval set uses",
                                   "calibrate on the train split so that accuracy is judged on unseen images")
        return replace(self, name=f"{self.name}-eval", split=EVAL_SPLIT, count=count, seed=seed,
                       description=f"eval set of {self.name}")


@dataclass(frozen=True)
class ImageSet:
    """Images preprocessed exactly as the model is fed (float32 NCHW), labels if known, and provenance."""

    images: np.ndarray
    labels: np.ndarray | None
    record: dict[str, Any]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.images.shape[1:])  # type: ignore[return-value]


def _fail(source: str, problem: str) -> CalibrationError:
    return CalibrationError(f"calibration definition {source}: {problem}",
                            "see calibration/fashion-mnist.toml for the format")


def _as_floats(value: Any, key: str, source: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, (int, float)) for v in value):
        raise _fail(source, f"{key} must be a list of numbers, one per channel")
    return tuple(float(v) for v in value)


def parse_definition(text: str, name: str, source: str = "") -> ImageSetDefinition:
    """A definition from TOML text, checked field by field."""
    where = source or name
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(where, f"not valid TOML ({exc})") from None
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise _fail(where, f"missing {', '.join(missing)}")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise _fail(where, f"unknown key(s) {', '.join(unknown)}")
    for key in ("dataset", "split"):
        if not isinstance(data[key], str):
            raise _fail(where, f"{key} must be a string")
    for key in ("count", "seed"):
        if key in data and (not isinstance(data[key], int) or isinstance(data[key], bool)):
            raise _fail(where, f"{key} must be an integer")
    if data["count"] < 1:
        raise CalibrationError(f"calibration set {where} is empty (count = {data['count']})",
                               "set count to the number of images to calibrate with, e.g. 256")
    preprocessing = data.get("preprocessing", "normalize")
    if preprocessing not in PREPROCESSING:
        raise _fail(where, f"unknown preprocessing {preprocessing!r} (use {' or '.join(PREPROCESSING)})")
    data_dir = data.get("data_dir")
    return ImageSetDefinition(name=name, dataset=data["dataset"], split=data["split"], count=data["count"],
                              seed=data.get("seed", 0), preprocessing=preprocessing,
                              mean=_as_floats(data.get("mean"), "mean", where),
                              std=_as_floats(data.get("std"), "std", where),
                              data_dir=str(data_dir) if data_dir is not None else None,
                              description=str(data.get("description", "")), source=source)


def available_definitions() -> list[str]:
    """Names of the calibration sets defined under calibration/."""
    return sorted(path.stem for path in CALIBRATION_DIR.glob("*.toml"))


def find_definition(name_or_file: str) -> Path:
    """The TOML file of a calibration set: a path, or a name under calibration/."""
    path = Path(name_or_file).expanduser()
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise CalibrationError(f"calibration definition {path} not found",
                                   "pass an existing .toml file or a name under calibration/")
        return path
    named = CALIBRATION_DIR / f"{name_or_file}.toml"
    if not named.is_file():
        raise CalibrationError(f"no calibration set named {name_or_file!r}",
                               f"use one of: {', '.join(available_definitions()) or '(none)'}, or a file path")
    return named


def load_definition(name_or_file: str) -> ImageSetDefinition:
    """Read and check a calibration definition by name (calibration/NAME.toml) or path."""
    path = find_definition(name_or_file)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(str(path), f"unreadable ({exc})") from None
    return parse_definition(text, path.stem, str(path))


def is_array_file(name_or_file: str | Path) -> bool:
    """Whether a --calibration / --eval-set value names preprocessed arrays rather than a definition."""
    return Path(name_or_file).suffix in ARRAY_SUFFIXES


def array_file_record(path: Path) -> dict[str, Any]:
    """What identifies an array file in the artifact hash and manifest: its name and content hash."""
    from toolchain.hashing import sha256_file

    if not path.is_file():
        raise CalibrationError(f"image set file {path} not found", "pass an existing .npy or .npz file")
    return {"file": path.name, "sha256": sha256_file(path)}


def load_array_file(path: Path, what: str) -> ImageSet:
    """Preprocessed images (and labels) from a .npy or .npz file."""
    record = {**array_file_record(path), "kind": "arrays"}
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            arrays = {"images": loaded}
        else:
            with loaded:
                arrays = {name: loaded[name] for name in loaded.files}
    except (OSError, ValueError, EOFError) as exc:
        raise CalibrationError(f"{what} {path} is not a readable .npy/.npz file: {exc}",
                               "save it with np.save / np.savez(images=..., labels=...)") from None
    if "images" not in arrays:
        raise CalibrationError(f"{what} {path} has no 'images' array (found: {', '.join(arrays) or 'none'})",
                               "save it with np.savez(path, images=..., labels=...)")
    images = arrays["images"]
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.floating):
        raise CalibrationError(f"{what} {path}: images are {images.dtype} {list(images.shape)}, "
                               "expected float N x C x H x W", "store preprocessed float32 NCHW images")
    if images.shape[0] == 0:
        raise CalibrationError(f"{what} {path} is empty (0 images)", "store at least one image")
    labels = arrays.get("labels")
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64)
        if labels.shape != (images.shape[0],):
            raise CalibrationError(f"{what} {path}: {labels.size} labels for {images.shape[0]} images",
                                   "store one integer label per image")
    record["count"] = int(images.shape[0])
    return ImageSet(np.ascontiguousarray(images, dtype=np.float32), labels, record)


def load_image_set(definition: ImageSetDefinition, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, data_dir: str | Path | None = None) -> ImageSet:
    """Draw and preprocess the images of a definition.

    Normalisation: the definition's own mean/std, else ``mean``/``std`` (the checkpoint's), else the
    dataset's. ``data_dir`` is used when the definition names no folder.
    """
    from toolchain.data import load_dataset
    from toolchain.data.geometry import dataset_geometry

    root = definition.data_dir if definition.data_dir is not None else data_dir
    dataset = load_dataset(definition.dataset, definition.split, root)
    if len(dataset) == 0:
        raise CalibrationError(f"image set {definition.name}: {definition.dataset} {definition.split} has no images",
                               "check the dataset folder")
    drawn = dataset.sample(definition.count, definition.seed)
    if definition.preprocessing == "scale":
        mean, std = (0.0,) * drawn.channels, (1.0,) * drawn.channels
    else:
        mean = definition.mean or (tuple(mean) if mean is not None else drawn.mean)
        std = definition.std or (tuple(std) if std is not None else drawn.std)
    if len(mean) != drawn.channels or len(std) != drawn.channels:
        raise CalibrationError(f"image set {definition.name}: mean/std have {len(mean)}/{len(std)} values for "
                               f"{drawn.channels}-channel images", "give one mean and std value per channel")
    images, labels = replace(drawn, mean=tuple(mean), std=tuple(std)).normalized_arrays()
    record = {"kind": "definition", **definition.content(), "resolved_mean": list(mean),
              "resolved_std": list(std), "drawn": len(drawn), "data_source": dataset.source,
              "class_names": list(dataset.class_names), "geometry": dataset_geometry(definition.dataset)}
    return ImageSet(images, labels, record)


def check_image_shape(image_set: ImageSet, expected: Sequence[int | None], what: str) -> None:
    """Fail unless the images fit a model input of shape C x H x W (None: any size on that axis)."""
    shape = image_set.image_shape
    fits = len(expected) == 3 and all(e is None or e == s for e, s in zip(expected, shape))
    if not fits:
        shown = [e if e is not None else "?" for e in expected]
        raise CalibrationError(f"{what} images are {list(shape)} (C x H x W), the model takes {shown}",
                               "use a calibration set of the model's dataset (channels and image size must match)")


def check_disjoint(calibration: ImageSet, evaluation: ImageSet) -> None:
    """Fail if any eval image also appears in the calibration set (accuracy must be judged on unseen images)."""
    def digests(images: np.ndarray) -> set[bytes]:
        return {hashlib.sha1(image.tobytes()).digest() for image in images}

    shared = len(digests(calibration.images) & digests(evaluation.images))
    if shared:
        raise CalibrationError(f"the eval set shares {shared} image(s) with the calibration set",
                               "draw them from different splits (calibration: train, eval: test)")


def resolve_calibration_arg(value: str | None, dataset: str | None) -> str:
    """The --calibration value to use: as given, or the definition named after the model's dataset."""
    if value:
        return value
    if dataset and (CALIBRATION_DIR / f"{dataset}.toml").is_file():
        return dataset
    raise UsageError(f"no calibration set for dataset {dataset or '(unknown)'}",
                     f"pass --calibration NAME_OR_FILE (defined: {', '.join(available_definitions())})")
