"""CIFAR-10 and CIFAR-100 from their "python version" pickle batches (no torchvision).

CIFAR-10:  ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``; each batch is a
pickled dict with ``data`` (uint8, N x 3072, channel-major 32x32) and ``labels``.
CIFAR-100: ``cifar-100-python/{train, test, meta}`` with ``fine_labels`` and ``coarse_labels``.
The files are Python 2 pickles, so keys are bytes. Unpickling is restricted to numpy arrays:
a dataset file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolchain.data.base import ImageDataset, check_split, require_dir, require_file
from toolchain.errors import DatasetError

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
# The normalisation the papers' code uses for CIFAR-10; the usual CIFAR-100 statistics.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")


def _load_pickle(path: Path) -> dict:
    require_file(path, "a CIFAR python pickle batch")
    try:
        with path.open("rb") as handle:
            obj = _NumpyOnlyUnpickler(handle, encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means a malformed file
        raise DatasetError(f"malformed CIFAR batch {path}: {exc}",
                           "re-extract the dataset archive (python version)") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"malformed CIFAR batch {path}: expected a dict, got {type(obj).__name__}",
                           "re-extract the dataset archive (python version)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(batch: dict, key: str, path: Path) -> Any:
    if key not in batch:
        raise DatasetError(f"malformed CIFAR batch {path}: no {key!r} entry",
                           f"expected keys like data, {key}")
    return batch[key]


def _names(meta: dict, key: str, path: Path) -> tuple[str, ...]:
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in _field(meta, key, path))


def _images_and_labels(paths: list[Path], label_key: str, num_classes: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in paths:
        batch = _load_pickle(path)
        data = np.asarray(_field(batch, "data", path))
        lab = np.asarray(_field(batch, label_key, path), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetError(
                f"malformed CIFAR batch {path}: data is {data.dtype} {data.shape}",
                "expected uint8 rows of 3072 values (3 x 32 x 32, channel-major)")
        if lab.shape != (data.shape[0],):
            raise DatasetError(f"malformed CIFAR batch {path}: {lab.shape[0]} labels for "
                               f"{data.shape[0]} images", "expected one label per image")
        if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
            raise DatasetError(f"malformed CIFAR batch {path}: label outside 0..{num_classes - 1}",
                               "the batch does not belong to this dataset")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)


def load_cifar10(root: Path, split: str) -> ImageDataset:
    """CIFAR-10 from ``root`` (the folder holding cifar-10-batches-py, or that folder itself)."""
    check_split(split)
    folder = root if root.name == CIFAR10_DIR else root / CIFAR10_DIR
    require_dir(folder, f"{CIFAR10_DIR}/ with data_batch_1..5, test_batch and batches.meta")
    meta_path = folder / "batches.meta"
    names = _names(_load_pickle(meta_path), "label_names", meta_path)
    files = [folder / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [folder / "test_batch"]
    images, labels = _images_and_labels(files, "labels", len(names))
    return ImageDataset(name="cifar10", split=split, images=torch.from_numpy(images),
                        labels=torch.from_numpy(labels), class_names=names,
                        mean=CIFAR10_MEAN, std=CIFAR10_STD, source=str(folder))


def load_cifar100(root: Path, split: str, labels: str = "fine") -> ImageDataset:
    """CIFAR-100 with its 100 fine or 20 coarse labels."""
    check_split(split)
    if labels not in ("fine", "coarse"):
        raise DatasetError(f"unknown CIFAR-100 label set {labels!r}", "use fine or coarse")
    folder = root if root.name == CIFAR100_DIR else root / CIFAR100_DIR
    require_dir(folder, f"{CIFAR100_DIR}/ with train, test and meta")
    meta_path = folder / "meta"
    names = _names(_load_pickle(meta_path), f"{labels}_label_names", meta_path)
    images, targets = _images_and_labels([folder / split], f"{labels}_labels", len(names))
    name = "cifar100" if labels == "fine" else "cifar100-coarse"
    return ImageDataset(name=name, split=split, images=torch.from_numpy(images),
                        labels=torch.from_numpy(targets), class_names=names,
                        mean=CIFAR100_MEAN, std=CIFAR100_STD, source=str(folder))
