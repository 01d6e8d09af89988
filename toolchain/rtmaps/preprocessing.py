"""What the RTMaps component must do to a frame, read from the manifest: the eval set's channels, geometry, mean/std.

Also the inverse: the eval set's preprocessed images back to the frames a camera would have delivered
(uint8, the dataset's stored size, H x W or H x W x 3), the golden inputs of the component.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from toolchain.data.geometry import dataset_geometry
from toolchain.errors import ArtifactError
from toolchain.manifest import Manifest

# how far an inverted eval image may lie from whole uint8 values (float32 normalisation rounds at ~1e-5 of 255)
_INVERSION_TOLERANCE = 1e-2
_REEXPORT = "re-export with a calibration definition (calibration/*.toml), so the eval set's preprocessing is recorded"


@dataclass(frozen=True)
class Preprocessing:
    """Frame -> model input, as the eval set was made: channels, stored size, padding, mean/std (per channel)."""

    channels: int
    height: int
    width: int
    stored: tuple[int, int]
    pad: tuple[int, int, int, int]
    pad_value: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # where the geometry was read: the eval set's record, or its dataset's loader (older manifests)

    def to_json(self) -> dict[str, Any]:
        """The component's CONFIG["preprocessing"]."""
        return {"channels": self.channels, "height": self.height, "width": self.width, "stored": list(self.stored),
                "pad": list(self.pad), "pad_value": self.pad_value, "mean": list(self.mean), "std": list(self.std),
                "source": self.source}


def preprocessing_of(manifest: Manifest, where: str) -> Preprocessing:
    """The eval set's preprocessing as the manifest states it; ArtifactError naming `where` when it does not."""
    evalset = manifest.inputs.get("evalset")
    if not isinstance(evalset, dict) or evalset.get("kind") != "definition":
        raise ArtifactError(f"{where}: the eval set is an array file of images preprocessed elsewhere; how a frame "
                            "becomes the model's input is not recorded", _REEXPORT)
    shape = manifest.input_shape
    if len(shape) != 4 or not all(isinstance(value, int) and value > 0 for value in shape[1:]):
        raise ArtifactError(f"{where}: input.shape {shape} is not N x C x H x W with fixed C, H, W",
                            "the RTMaps component feeds one image of a fixed size: export with a fixed input size")
    channels, height, width = (int(value) for value in shape[1:])
    if channels not in (1, 3):
        raise ArtifactError(f"{where}: the model takes {channels} channels; frames are grey or colour (1 or 3)",
                            "use a model of grey or RGB images")
    mean, std = evalset.get("resolved_mean"), evalset.get("resolved_std")
    if not (_numbers(mean, channels) and _numbers(std, channels) and all(value > 0 for value in std)):
        raise ArtifactError(f"{where}: inputs.evalset has no resolved_mean / resolved_std for {channels} channel(s)",
                            _REEXPORT)
    geometry, source = evalset.get("geometry"), "manifest (inputs.evalset.geometry)"
    if geometry is None:
        geometry, source = dataset_geometry(str(evalset.get("dataset"))), "dataset loader (manifest predates geometry)"
    if not isinstance(geometry, dict):
        raise ArtifactError(f"{where}: no preprocessing is recorded for the eval set's dataset "
                            f"{evalset.get('dataset')!r}", _REEXPORT)
    if "resize" in geometry:
        raise ArtifactError(f"{where}: the eval set was resized by Pillow ({geometry['resize']}) from files of any "
                            "size, which the component cannot reproduce exactly with numpy",
                            "use a dataset fed at its stored size (Fashion-MNIST, CIFAR) for an RTMaps component")
    if not geometry:
        return Preprocessing(channels, height, width, (height, width), (0, 0, 0, 0), 0, tuple(mean), tuple(std),
                             source)
    stored, pad = geometry.get("stored"), geometry.get("pad")
    valid = (isinstance(stored, list) and len(stored) == 2 and isinstance(pad, list) and len(pad) == 4
             and all(isinstance(value, int) and value >= 0 for value in [*stored, *pad])
             and stored[0] + pad[0] + pad[1] == height and stored[1] + pad[2] + pad[3] == width
             and isinstance(geometry.get("pad_value"), int))
    if not valid:
        raise ArtifactError(f"{where}: inputs.evalset.geometry {geometry!r} does not lay a stored image into the "
                            f"model's {height}x{width} input", "the manifest was edited: delete the folder and rerun "
                            "the export")
    return Preprocessing(channels, height, width, (stored[0], stored[1]), (pad[0], pad[1], pad[2], pad[3]),
                         int(geometry["pad_value"]), tuple(mean), tuple(std), source)


def _numbers(values: Any, count: int) -> bool:
    return (isinstance(values, list) and len(values) == count
            and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values))


def frames_of(images: np.ndarray, spec: Preprocessing, where: str) -> np.ndarray:
    """Eval images (float32 N x C x H x W, preprocessed) back to uint8 frames of the stored size (N x h x w [x 3]).

    Fails when an image is not what `spec` says it was made from (pixels off whole uint8 values, padding not
    the pad value): then the manifest and the eval set disagree and no golden frame can be trusted.
    """
    mean = np.asarray(spec.mean, dtype=np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float64).reshape(1, -1, 1, 1)
    pixels = (images.astype(np.float64) * std + mean) * 255.0
    top, bottom, left, right = spec.pad
    inner = pixels[:, :, top:spec.height - bottom, left:spec.width - right]
    border = np.ones(pixels.shape[2:], dtype=bool)
    border[top:spec.height - bottom, left:spec.width - right] = False
    off_grid = np.abs(inner - np.rint(inner)).max(initial=0.0)
    off_pad = np.abs(pixels[:, :, border] - spec.pad_value).max(initial=0.0)
    if off_grid > _INVERSION_TOLERANCE or off_pad > _INVERSION_TOLERANCE or inner.min() < -0.5 or inner.max() > 255.5:
        raise ArtifactError(f"{where}: the eval images are not uint8 {spec.stored[0]}x{spec.stored[1]} images "
                            f"preprocessed as the manifest says (off by {max(off_grid, off_pad):.3g} of 255)",
                            "the eval set and the manifest disagree: delete the folder and rerun the export")
    frames = np.rint(inner).astype(np.uint8).transpose(0, 2, 3, 1)
    return frames[:, :, :, 0] if spec.channels == 1 else np.ascontiguousarray(frames)
