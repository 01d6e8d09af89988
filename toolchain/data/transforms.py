"""Batch transforms done in torch: the papers' random crop with padding and horizontal flip."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.nn import functional as F

from toolchain.data.base import ImageDataset


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each image by ``padding`` and cut a random crop of the original size (batched)."""
    if padding <= 0:
        return images
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    rows = (top[:, None] + torch.arange(height))[:, None, :, None]
    cols = (left[:, None] + torch.arange(width))[:, None, None, :]
    return padded[torch.arange(batch)[:, None, None, None], torch.arange(channels)[None, :, None, None],
                  rows, cols]


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    out = images.clone()
    out[flip] = images[flip].flip(3)
    return out


def iterate_batches(dataset: ImageDataset, batch_size: int, *, shuffle: bool = False,
                    augment: bool = False, crop_padding: int = 4,
                    generator: torch.Generator | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised float32 batches (and labels) straight from the in-memory uint8 images."""
    for images, labels in _uint8_batches(dataset, batch_size, shuffle, augment, crop_padding, generator):
        yield dataset.normalize(images), labels


def iterate_shards(dataset: ImageDataset, batch_size: int, rank: int, world_size: int, *,
                   shuffle: bool = False, augment: bool = False, crop_padding: int = 4,
                   generator: torch.Generator | None = None
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Rank ``rank``'s part of each batch `iterate_batches` would yield, and that whole batch's size.

    Every rank draws the same global batches (same generator, same augmentation draws) and keeps a
    disjoint contiguous slice of each (sizes differ by at most one), so ``world_size`` processes see
    exactly the images and augmentations one process would, batch for batch.
    """
    for images, labels in _uint8_batches(dataset, batch_size, shuffle, augment, crop_padding, generator):
        base, extra = divmod(len(labels), world_size)
        start = rank * base + min(rank, extra)
        stop = start + base + (rank < extra)
        yield dataset.normalize(images[start:stop]), labels[start:stop], len(labels)


def _uint8_batches(dataset: ImageDataset, batch_size: int, shuffle: bool, augment: bool, crop_padding: int,
                   generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    generator = generator or torch.Generator().manual_seed(0)
    count = len(dataset)
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    for start in range(0, count, batch_size):
        index = order[start:start + batch_size]
        images = dataset.images[index]
        if augment:
            images = random_hflip(random_crop(images, crop_padding, generator), generator)
        yield images, dataset.labels[index]
