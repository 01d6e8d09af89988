"""The in-memory dataset record every loader returns, and the helpers loaders share."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from toolchain.errors import DatasetError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class ImageDataset:
    """A labeled image set held as uint8 N x C x H x W (decoded once, normalised per batch)."""

    name: str
    split: str
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 NCHW, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be one per image")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean/std need one value per channel")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: np.ndarray | list[int] | torch.Tensor) -> "ImageDataset":
        """The images at `indices`, in that order."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return replace(self, images=self.images[index], labels=self.labels[index])

    def sample(self, count: int, seed: int) -> "ImageDataset":
        """A deterministic random subset of `count` images (all of them if count >= len)."""
        if count >= len(self):
            return self
        order = np.random.default_rng(seed).permutation(len(self))[:count]
        return self.subset(np.sort(order))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> float32 batch, scaled to [0, 1] then standardised per channel."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (images.to(torch.float32).div_(255.0) - mean) / std

    def normalized_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Every image normalised as float32 NCHW, and the labels as int64 (for ONNX Runtime)."""
        return self.normalize(self.images).numpy(), self.labels.numpy().astype(np.int64)

    def describe(self) -> dict:
        """What a checkpoint sidecar or manifest records about the data."""
        return {"name": self.name, "split": self.split, "count": len(self),
                "channels": self.channels, "image_size": list(self.image_size),
                "num_classes": self.num_classes, "class_names": list(self.class_names),
                "mean": list(self.mean), "std": list(self.std)}


def require_dir(path: Path, what: str) -> Path:
    """A folder that must exist, or a one-line error naming it and what was expected."""
    if not path.is_dir():
        raise DatasetError(f"dataset folder not found: {path}", f"expected {what}")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}", f"expected {what}")
    return path


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}", f"use one of: {', '.join(SPLITS)}")
    return split


def pad_images(images: np.ndarray, geometry: dict) -> np.ndarray:
    """Pad N x C x H x W images as a pad geometry says (toolchain.data.geometry; Fashion-MNIST 28 -> 32)."""
    if list(images.shape[2:]) != geometry["stored"]:
        raise ValueError(f"images are {list(images.shape[2:])}, the geometry pads {geometry['stored']}")
    top, bottom, left, right = geometry["pad"]
    return np.pad(images, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=geometry["pad_value"])
