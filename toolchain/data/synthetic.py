"""A deterministic synthetic dataset for tests: one smooth random template per class plus noise.

The same (seed, split) always gives the same images; train and test draw different noise from the
same class templates, so a model can learn it in a few steps.
"""

from __future__ import annotations

import numpy as np
import torch

from toolchain.data.base import ImageDataset, check_split

SIZES = {"train": 2048, "test": 512}


def load_synthetic(split: str, count: int | None = None, num_classes: int = 10, channels: int = 3,
                   size: int = 32, seed: int = 0) -> ImageDataset:
    """``count`` images (default 2048 train / 512 test) of ``num_classes`` classes."""
    check_split(split)
    count = SIZES[split] if count is None else count
    templates_rng = np.random.default_rng(seed)
    coarse = templates_rng.uniform(40, 215, size=(num_classes, channels, 4, 4))
    templates = np.kron(coarse, np.ones((1, 1, size // 4 + 1, size // 4 + 1)))[:, :, :size, :size]
    rng = np.random.default_rng([seed, 1 if split == "train" else 2])
    labels = np.arange(count) % num_classes
    rng.shuffle(labels)
    noise = rng.normal(0.0, 30.0, size=(count, channels, size, size))
    images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    return ImageDataset(name="synthetic", split=split, images=torch.from_numpy(images),
                        labels=torch.from_numpy(labels.astype(np.int64)),
                        class_names=tuple(f"class{k}" for k in range(num_classes)),
                        mean=(0.5,) * channels, std=(0.25,) * channels, source=f"seed={seed}")
