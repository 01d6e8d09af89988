"""How each dataset's loader lays a stored image out before it is scaled and normalised (numpy-free, torch-free).

The eval set's record in the manifest carries its dataset's geometry, so that whatever feeds the model
later (the RTMaps component) can preprocess a frame exactly as the eval images were:

    {}                                         fed as stored (CIFAR, synthetic)
    {"stored": [h, w], "pad": [top, bottom, left, right], "pad_value": 0}
                                               the stored h x w image, padded (Fashion-MNIST 28 -> 32)
    {"resize": "pillow-bicubic"}               decoded and resized by Pillow (image folders), any stored size
"""

from __future__ import annotations

from typing import Any


def pad_geometry(height: int, width: int, size: int) -> dict[str, Any]:
    """A height x width image centred in size x size with zeros (an odd margin puts the extra row below / column right)."""
    if height > size or width > size:
        raise ValueError(f"cannot pad {height}x{width} to {size}x{size}")
    top, left = (size - height) // 2, (size - width) // 2
    return {"stored": [height, width], "pad": [top, size - height - top, left, size - width - left], "pad_value": 0}


FASHION_MNIST = pad_geometry(28, 28, 32)
GEOMETRY: dict[str, dict[str, Any]] = {
    "fashion-mnist": FASHION_MNIST, "cifar10": {}, "cifar100": {}, "cifar100-coarse": {}, "synthetic": {},
    "imagefolder": {"resize": "pillow-bicubic"}}


def dataset_geometry(name: str) -> dict[str, Any] | None:
    """The geometry of the loader called ``name`` (None for a name no loader has)."""
    return dict(GEOMETRY[name]) if name in GEOMETRY else None
