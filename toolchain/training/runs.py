"""Run folders: ``artifacts/train/<model>/<dataset>/<run-id>/``, each epoch's files, and exact resume.

Every file is written atomically after each epoch (checkpoint + sidecar, CSV, curves, then resume.pt),
so an interruption leaves the previous epoch's files valid.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import MultiStepLR

from toolchain.data import ImageDataset
from toolchain.errors import TrainingError
from toolchain.fsutil import atomic_write_bytes, ensure_writable_dir
from toolchain.training.checkpoints import CHECKPOINT_NAME, TRAIN_DIR, CheckpointInfo, save_checkpoint
from toolchain.training.logs import curves_png, metrics_csv

if TYPE_CHECKING:
    from toolchain.training.loop import EpochMetrics, TrainConfig

RESUME_NAME = "resume.pt"
METRICS_NAME = "metrics.csv"
CURVES_NAME = "curves.png"
RESUME_SCHEMA = "toolchain.resume/1"


def resume_file(path: Path) -> Path:
    """The resume.pt a ``--resume`` argument names (the file itself or its run folder)."""
    path = Path(path)
    file = path / RESUME_NAME if path.is_dir() else path
    if not file.is_file():
        raise TrainingError(f"resume file not found: {file}",
                            f"pass a run folder written by `toolchain train` (it holds {RESUME_NAME})")
    return file


def read_resume(path: Path) -> dict[str, Any]:
    """The saved state of an unfinished run (loaded with weights_only=True)."""
    file = resume_file(path)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrainingError(f"cannot read resume file {file}: {detail}",
                            "it is damaged; start a new run or resume from another copy") from None
    if not isinstance(payload, dict) or payload.get("schema") != RESUME_SCHEMA:
        raise TrainingError(f"{file} is not a toolchain resume file",
                            f"pass the {RESUME_NAME} of a run folder written by `toolchain train`")
    return payload



def new_run_dir(config: "TrainConfig", model_name: str) -> Path:
    if config.run_dir is not None:
        run_dir = ensure_writable_dir(Path(config.run_dir), "run folder")
        if (run_dir / CHECKPOINT_NAME).exists() or (run_dir / RESUME_NAME).exists():
            raise TrainingError(f"run folder {run_dir} already holds a training run",
                                f"continue it with --resume {run_dir}, or pick another --run-dir")
        return run_dir
    parent = ensure_writable_dir(Path(config.artifacts) / TRAIN_DIR / model_name / config.dataset,
                                 "artifacts folder")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in itertools.count(1):
        candidate = parent / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate


def restore(saved: dict[str, Any], model: nn.Module, optimizer: Optimizer, scheduler: MultiStepLR,
             generator: torch.Generator, history: list["EpochMetrics"], run_dir: Path) -> int:
    from toolchain.training.loop import EpochMetrics

    epoch, epochs = int(saved["epoch"]), int(saved["config"]["epochs"])
    if epoch >= epochs:
        raise TrainingError(f"the run in {run_dir} already finished ({epoch} of {epochs} epochs)",
                            f"nothing to resume: evaluate {run_dir / CHECKPOINT_NAME} or start a new run")
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        history.extend(EpochMetrics(**row) for row in saved["history"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise TrainingError(f"resume file in {run_dir} does not fit this run: {str(exc).splitlines()[0]}",
                            "it was written by another version of the model; start a new run") from None
    return epoch


def save_epoch(run_dir: Path, model: nn.Module, optimizer: Optimizer, scheduler: MultiStepLR,
                generator: torch.Generator, history: list["EpochMetrics"], config: "TrainConfig",
                model_name: str, train_set: ImageDataset, training_record: dict[str, Any]) -> CheckpointInfo:
    """Checkpoint + sidecar, CSV, curves, then the resume file: each atomic, so an interruption leaves
    the previous epoch's files valid (and a resume at worst repeats the interrupted epoch)."""
    last = history[-1]
    best = max(history, key=lambda m: m.test_top1)
    metrics = {key: value for key, value in asdict(last).items() if key != "epoch" and value is not None}
    metrics.update(best_test_top1=best.test_top1, best_epoch=best.epoch)
    info = CheckpointInfo(model=model_name, dataset=train_set.name, num_classes=train_set.num_classes,
                          in_channels=train_set.channels, input_size=train_set.image_size[0],
                          class_names=list(train_set.class_names), mean=list(train_set.mean),
                          std=list(train_set.std), epoch=last.epoch, epochs=config.epochs, metrics=metrics,
                          training=training_record)
    info = save_checkpoint(model, info, run_dir / CHECKPOINT_NAME)
    atomic_write_bytes(run_dir / METRICS_NAME, metrics_csv(history, top5=train_set.num_classes > 10))
    atomic_write_bytes(run_dir / CURVES_NAME, curves_png(history, f"{model_name} on {train_set.name}"))
    state = {"schema": RESUME_SCHEMA, "config": config.to_dict(), "epoch": last.epoch,
             "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
             "torch_rng": torch.get_rng_state(), "history": [asdict(m) for m in history],
             "checkpoint_sha256": info.sha256}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(run_dir / RESUME_NAME, buffer.getvalue())
    return info
