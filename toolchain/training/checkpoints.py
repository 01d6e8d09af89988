"""Checkpoints: a `state_dict` file (as the papers save them) plus a JSON sidecar saying what it is.

Layout of a training run (``artifacts/train/<model>/<dataset>/<run-id>/``)::

    checkpoint.pt     torch.save(model.state_dict()) -- weights only
    checkpoint.json   sidecar: model, dataset, classes, normalisation, epoch, metrics, sha256
    resume.pt         optimizer / scheduler / RNG state for --resume (written by train.py)

Loading uses ``torch.load(weights_only=True)``: a checkpoint cannot run code. State dicts from
elsewhere are accepted too (wrapped in ``{"state_dict": ...}``-style dicts or saved from
``nn.DataParallel``); without a sidecar the class and channel counts are read off the weights.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any


from toolchain.errors import CheckpointError
from toolchain.fsutil import atomic_write_bytes, atomic_write_json
from toolchain.hashing import sha256_file

if TYPE_CHECKING:  # torch only where weights are read or written: finding a checkpoint needs none
    import torch
    from torch import nn

    from toolchain.models import ModelSpec

SCHEMA = "toolchain.checkpoint/1"
CHECKPOINT_NAME = "checkpoint.pt"
TRAIN_DIR = "train"
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "net_state_dict", "model", "net")
_MAX_LISTED = 3


@dataclass
class CheckpointInfo:
    """The sidecar of a checkpoint: what network, trained on what, how well."""

    model: str
    dataset: str
    num_classes: int
    in_channels: int
    input_size: int
    class_names: list[str]
    mean: list[float]
    std: list[float]
    epoch: int = 0
    epochs: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    created: str = ""
    torch_version: str = ""
    schema: str = SCHEMA

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CheckpointInfo":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedCheckpoint:
    """A model with its weights loaded, and what is known about it."""

    model: "nn.Module"
    spec: "ModelSpec"
    path: Path
    sha256: str
    info: CheckpointInfo | None


def sidecar_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".json")


def save_checkpoint(model: "nn.Module", info: CheckpointInfo, path: Path) -> CheckpointInfo:
    """Write ``state_dict`` and sidecar atomically; returns the info with sha256 filled in."""
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(path, buffer.getvalue())
    info.sha256 = sha256_file(path)
    info.created = info.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
    info.torch_version = torch.__version__
    atomic_write_json(sidecar_path(path), info.to_dict())
    return info


def read_info(checkpoint: Path) -> CheckpointInfo | None:
    """The sidecar of a checkpoint, or None if it has none."""
    path = sidecar_path(checkpoint)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"unreadable checkpoint sidecar {path}: {exc}",
                              "delete the .json file to load the weights without it") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise CheckpointError(f"{path} is not a toolchain checkpoint sidecar",
                              "delete the .json file to load the weights without it")
    return CheckpointInfo.from_dict(data)


def read_state_dict(path: Path) -> dict[str, "torch.Tensor"]:
    """The tensors of a checkpoint file, unwrapped from common containers."""
    import torch

    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}",
                              "pass a .pt file written by `toolchain train` or torch.save(state_dict)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types (KeyError for plain text)
        raise CheckpointError(f"cannot load checkpoint {path}: {_load_failure(exc)}",
                              "it must be a torch.save(model.state_dict()) file "
                              "(whole pickled models are refused: weights_only=True)") from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state_dict",
                              "save it with torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _load_failure(exc: Exception) -> str:
    """What torch.load's error means, in a few words (its weights-only messages run to a paragraph)."""
    text = str(exc).strip()
    if isinstance(exc, (KeyError, EOFError)) or not text:
        return "not a torch.save file"
    if "WeightsUnpickler error:" in text:
        detail = next((line.strip() for line in text.split("WeightsUnpickler error:", 1)[1].splitlines()
                       if line.strip()), "")
        if detail.startswith("Unsupported global"):
            return "it pickles Python objects, not only tensors (refused: loading it could run code)"
        return f"not a torch.save file ({detail})" if detail else "not a torch.save file"
    if "central directory" in text or "PytorchStreamReader" in text:
        return "the file is truncated or corrupted (not a complete torch.save archive)"
    return text.splitlines()[0][:300]


def _infer_shape_options(state: dict[str, "torch.Tensor"]) -> tuple[int, int]:
    """(num_classes, in_channels) read off the first conv and the last weight matrix."""
    convs = [v for v in state.values() if v.dim() == 4]
    heads = [v for k, v in state.items() if k.endswith("weight") and v.dim() in (2, 4)]
    if not convs or not heads:
        raise CheckpointError("cannot tell the class and channel counts of this checkpoint",
                              "it has no convolution weights; is it an image classifier?")
    return int(heads[-1].shape[0]), int(convs[0].shape[1])


def describe_mismatch(expected: dict[str, "torch.Tensor"], found: dict[str, "torch.Tensor"]) -> str | None:
    """A one-line description of the first keys/shapes that differ, or None if they fit."""
    problems = []
    for key, tensor in expected.items():
        if key not in found:
            problems.append(f"missing {key}")
        elif tuple(found[key].shape) != tuple(tensor.shape):
            problems.append(f"{key} is {list(found[key].shape)}, model expects {list(tensor.shape)}")
    problems.extend(f"unexpected {key}" for key in found if key not in expected)
    if not problems:
        return None
    more = f" (+{len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
    return "; ".join(problems[:_MAX_LISTED]) + more


def load_checkpoint(path: Path, model_name: str | None = None, sha256: str | None = None) -> LoadedCheckpoint:
    """Build the checkpoint's model and load its weights, or explain why they do not fit.

    ``sha256``: the file's hash when the caller has just computed it (it is not hashed again).
    """
    from toolchain.models import resolve

    path = Path(path)
    state = read_state_dict(path)
    info = read_info(path)
    if info is not None and model_name is not None and resolve(model_name).name != resolve(info.model).name:
        raise CheckpointError(f"checkpoint {path} is for {info.model}, not {resolve(model_name).name}",
                              f"pass --model {info.model}, or a checkpoint of {model_name}")
    name = model_name or (info.model if info else None)
    if name is None:
        raise CheckpointError(f"checkpoint {path} has no sidecar naming its model",
                              "pass --model NAME for a state_dict from elsewhere")
    spec = resolve(name)
    if info is not None:
        num_classes, in_channels = info.num_classes, info.in_channels
    else:
        num_classes, in_channels = _infer_shape_options(state)
    sha256 = sha256 or sha256_file(path)
    if info is not None and info.sha256 and info.sha256 != sha256:
        raise CheckpointError(f"checkpoint {path} is not the file its sidecar describes (sha256 differs)",
                              "it was replaced or damaged after training; retrain, or delete the .json "
                              "to load the weights without it")
    model = spec.build(num_classes=num_classes, in_channels=in_channels)
    mismatch = describe_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"checkpoint {path.name} does not fit {spec.name}: {mismatch}",
                              "it was trained for another architecture; pass the matching --model")
    model.load_state_dict(state)
    model.eval()
    return LoadedCheckpoint(model=model, spec=spec, path=path, sha256=sha256, info=info)


def find_latest_checkpoint(artifacts: Path, model: str, dataset: str) -> Path | None:
    """The newest checkpoint trained for (model, dataset) under ``artifacts/train``, if any.

    A run that finished all its epochs wins over a newer one that stopped early (interrupted, or still
    running); with only unfinished runs, the newest of them (its sidecar says which epoch it reached).
    """
    folder = Path(artifacts) / TRAIN_DIR / model / dataset
    if not folder.is_dir():  # runs are filed under the registry's spelling of the name: torch only to find it
        from toolchain.models import resolve

        folder = Path(artifacts) / TRAIN_DIR / resolve(model).name / dataset
    candidates = []
    for sidecar in folder.glob(f"*/{Path(CHECKPOINT_NAME).stem}.json"):
        checkpoint = sidecar.with_suffix(".pt")
        info = read_info(checkpoint) if checkpoint.is_file() else None
        if info is not None:
            candidates.append((info.epoch >= info.epochs, info.created, sidecar.parent.name, checkpoint))
    return max(candidates)[3] if candidates else None
