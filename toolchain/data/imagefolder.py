"""An image-folder dataset: ``ROOT/<split>/<class name>/*.png|jpg|...`` (classes sorted by name).

Images are decoded with Pillow, converted to RGB (or grey with ``channels=1``) and resized to
``size`` x ``size``. The normalisation is the per-channel mean/std of the split that was loaded;
training records it in the checkpoint sidecar so evaluation and export reuse the training values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from toolchain.data.base import ImageDataset, check_split, require_dir
from toolchain.errors import DatasetError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif", ".tiff"}


def load_image_folder(root: Path, split: str, size: int = 32, channels: int = 3) -> ImageDataset:
    """Every image under ``root/split/<class>/``."""
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib

    check_split(split)
    if channels not in (1, 3):
        raise DatasetError(f"image folder channels must be 1 or 3, got {channels}", "use 1 or 3")
    folder = require_dir(root / split, f"{split}/<class name>/<images> under {root}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"no class folders in {folder}", "expected one sub-folder per class")
    arrays, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() not in EXTENSIONS:
                continue
            try:
                with Image.open(path) as image:
                    image = image.convert("L" if channels == 1 else "RGB").resize((size, size))
                    pixels = np.asarray(image, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as exc:
                raise DatasetError(f"unreadable image {path}: {exc}",
                                   "remove or replace the file") from None
            arrays.append(pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))
            labels.append(label)
    if not arrays:
        raise DatasetError(f"no images in {folder}",
                           f"expected files ending in {', '.join(sorted(EXTENSIONS))}")
    images = np.stack(arrays)
    scaled = images.astype(np.float64) / 255.0
    mean = tuple(float(m) for m in scaled.mean(axis=(0, 2, 3)))
    std = tuple(max(float(s), 1e-3) for s in scaled.std(axis=(0, 2, 3)))
    return ImageDataset(name="imagefolder", split=split, images=torch.from_numpy(images),
                        labels=torch.tensor(labels, dtype=torch.int64), class_names=tuple(classes),
                        mean=mean, std=std, source=str(root))
