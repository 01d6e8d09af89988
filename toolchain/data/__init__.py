"""Datasets without torchvision: CIFAR-10/100, Fashion-MNIST, image folders, synthetic; calibration/eval image sets.

`load_dataset(name, split, root)` is the one entry point; every loader returns an `ImageDataset`
(uint8 images in memory, class names, normalisation) and fails with a one-line `DatasetError`
naming the path and what was expected. The loaders (torch) are imported on first use, so that
`toolchain.data.imagesets` (definitions of calibration and eval sets, numpy only) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"DATASETS": "loaders", "DEFAULT_DATASET": "loaders", "load_dataset": "loaders",
         "FASHION_MNIST_ROOT": "loaders", "ImageDataset": "base", "iterate_batches": "transforms",
         "iterate_shards": "transforms"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'toolchain.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"toolchain.data.{_LAZY[name]}"), name)
