"""`load_dataset(name, split, root)`: the one entry point to every dataset loader."""

from __future__ import annotations

import difflib
from pathlib import Path

from toolchain.data.base import ImageDataset
from toolchain.data.cifar import load_cifar10, load_cifar100
from toolchain.data.fashion_mnist import DEFAULT_ROOT as FASHION_MNIST_ROOT  # noqa: F401 (toolchain.data's)
from toolchain.data.fashion_mnist import load_fashion_mnist
from toolchain.data.imagefolder import load_image_folder
from toolchain.data.synthetic import load_synthetic
from toolchain.errors import DatasetError

DEFAULT_DATASET = "fashion-mnist"
DATASETS = {
    "fashion-mnist": "Fashion-MNIST idx .gz files (default: Debian's dataset-fashion-mnist)",
    "cifar10": "CIFAR-10 python batches (cifar-10-batches-py/)",
    "cifar100": "CIFAR-100 python batches, 100 fine labels (cifar-100-python/)",
    "cifar100-coarse": "CIFAR-100 python batches, 20 coarse labels (cifar-100-python/)",
    "imagefolder": "ROOT/{train,test}/<class>/<images>",
    "synthetic": "deterministic synthetic images for tests (no files)",
}
_NEEDS_ROOT = {"cifar10", "cifar100", "cifar100-coarse", "imagefolder"}


def load_dataset(name: str, split: str, root: str | Path | None = None,
                 limit: int | None = None, **options: int) -> ImageDataset:
    """Load a dataset split by name; ``limit`` keeps the first images only (quick runs)."""
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=2)
        hint = f"did you mean {' or '.join(close)}?" if close else f"use one of: {', '.join(DATASETS)}"
        raise DatasetError(f"unknown dataset {name!r}", hint)
    if name in _NEEDS_ROOT and root is None:
        raise DatasetError(f"dataset {name} needs a folder", f"pass --data-dir with {DATASETS[name]}")
    path = Path(root).expanduser() if root is not None else None
    if name == "fashion-mnist":
        return load_fashion_mnist(path, split, limit)
    if name == "synthetic":
        return load_synthetic(split, count=limit, **options)
    if name == "cifar10":
        dataset = load_cifar10(path, split)
    elif name == "imagefolder":
        dataset = load_image_folder(path, split, **options)
    else:
        dataset = load_cifar100(path, split, "coarse" if name.endswith("coarse") else "fine")
    return dataset.subset(range(min(limit, len(dataset)))) if limit is not None else dataset

