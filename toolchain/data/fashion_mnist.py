"""Fashion-MNIST from its idx ``.gz`` files, padded from 28x28 to 32x32 (one channel).

Default location: where Debian's ``dataset-fashion-mnist`` package installs it.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from toolchain.data.base import ImageDataset, check_split, pad_images, require_dir, require_file
from toolchain.data.geometry import FASHION_MNIST
from toolchain.errors import DatasetError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
# Statistics of the 28x28 training images (the padding adds zeros, as torchvision's Pad would).
MEAN, STD = (0.2860,), (0.3530,)
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
_PREFIX = {"train": "train", "test": "t10k"}


def _read_idx(path: Path, magic: int, limit: int | None) -> np.ndarray:
    require_file(path, "a gzip-compressed idx file from Fashion-MNIST")
    try:
        with gzip.open(path, "rb") as handle:
            header_magic = struct.unpack(">I", handle.read(4))[0]
            if header_magic != magic:
                raise DatasetError(f"malformed idx file {path}: magic {header_magic}, expected {magic}",
                                   "the images and labels files may be swapped or corrupt")
            ndim = magic & 0xFF
            dims = struct.unpack(f">{ndim}I", handle.read(4 * ndim))
            count = dims[0] if limit is None else min(dims[0], limit)
            item = int(np.prod(dims[1:], dtype=np.int64)) if ndim > 1 else 1
            payload = handle.read(count * item)
    except (OSError, EOFError, struct.error) as exc:
        raise DatasetError(f"malformed idx file {path}: {exc}",
                           "reinstall dataset-fashion-mnist or re-download the .gz files") from None
    if len(payload) != count * item:
        raise DatasetError(f"malformed idx file {path}: truncated ({len(payload)} of {count * item} bytes)",
                           "reinstall dataset-fashion-mnist or re-download the .gz files")
    return np.frombuffer(payload, dtype=np.uint8).reshape((count,) + tuple(dims[1:]))


def load_fashion_mnist(root: Path | None, split: str, limit: int | None = None) -> ImageDataset:
    """Fashion-MNIST; ``limit`` decodes only the first images (the files are streamed)."""
    check_split(split)
    folder = require_dir(root or DEFAULT_ROOT,
                         "train/t10k-{images-idx3,labels-idx1}-ubyte.gz "
                         "(apt-get install dataset-fashion-mnist)")
    prefix = _PREFIX[split]
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", _IMAGES_MAGIC, limit)
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", _LABELS_MAGIC, limit)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels",
                           "the images and labels files do not belong together")
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise DatasetError(f"Fashion-MNIST {split}: label {labels.max()} out of range",
                           "the labels file is corrupt")
    padded = pad_images(images[:, None, :, :], FASHION_MNIST)
    return ImageDataset(name="fashion-mnist", split=split,
                        images=torch.from_numpy(np.ascontiguousarray(padded)),
                        labels=torch.from_numpy(labels.astype(np.int64)), class_names=CLASS_NAMES,
                        mean=MEAN, std=STD, source=str(folder))
