"""One trial: a normal training run and a normal `export`, on whichever Ray worker it lands.

A trial is a function of its parameters: its training folder is named by a hash of the training settings
(``artifacts/train/<model>/<dataset>/sweep-<key>/``), so a trial cut off mid-run continues from its last
finished epoch, and a finished one is reused; the export is content-addressed as every export is.
Failures come back as data (message and hint), never as an exception: one trial never ends a sweep.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from toolchain.errors import ToolchainError
from toolchain.fsutil import atomic_write_json
from toolchain.sweep.space import SweepSpec, trial_model, trial_quant

BUDGET_NAME = "sweep-budget.json"  # in a training folder the time budget cut short


class _BudgetReached(Exception):
    """Raised from the progress callback after the epoch that crossed the time budget (its checkpoint is saved)."""


def training_key(spec: SweepSpec, model: str) -> str:
    """What decides a trial's weights (model, data, budget, seed), hashed: the name of its training folder."""
    record = {"model": model, "dataset": spec.dataset, "budget": vars(spec.budget), "seed": spec.seed}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]


def run_trial(spec: SweepSpec, params: dict[str, Any], artifacts: str, data_dir: str | None) -> dict[str, Any]:
    """Train (or reuse) and export one trial's model; a dict with the artifact, or with ``error`` and ``hint``."""
    started = time.time()
    where = {"worker_host": socket.gethostname(), "worker_pid": os.getpid(), "ray_node_ip": _node_ip(),
             "ray_node_id": _node_id()}
    try:
        model = trial_model(spec, params)
        trained = _train(spec, model, Path(artifacts), Path(data_dir) if data_dir else None)
        exported = _export(spec, params, model, Path(trained["checkpoint"]), Path(artifacts),
                           Path(data_dir) if data_dir else None)
    except ToolchainError as error:
        return {**where, "error": error.message, "hint": error.hint or "", "error_kind": type(error).__name__,
                "seconds": time.time() - started}
    except Exception as error:  # a library's own exception met nowhere else: recorded, the sweep goes on
        first = (str(error).strip().splitlines() or [""])[0][:300]
        return {**where, "error": f"{type(error).__name__}: {first}", "error_kind": type(error).__name__,
                "hint": "rerun this model alone with `toolchain train` and `toolchain export --debug` to see why",
                "seconds": time.time() - started}
    return {**where, **trained, **exported, "model": model, "seconds": time.time() - started}


def _node_ip() -> str | None:
    try:
        import ray

        return ray.util.get_node_ip_address() if ray.is_initialized() else None
    except Exception:  # outside Ray (a direct call): no node
        return None


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # outside Ray (a direct call): no node
        return None


def _train(spec: SweepSpec, model: str, artifacts: Path, data_dir: Path | None) -> dict[str, Any]:
    from toolchain.training.loop import TrainConfig, TrainProgress, train_model
    from toolchain.training.runs import CHECKPOINT_NAME, RESUME_NAME, TRAIN_DIR, read_resume

    budget = spec.budget
    run_dir = artifacts / TRAIN_DIR / model / spec.dataset / f"sweep-{training_key(spec, model)}"
    config = TrainConfig(model=model, dataset=spec.dataset, data_dir=data_dir, epochs=budget.epochs,
                         batch_size=budget.batch_size, lr=budget.lr, train_limit=budget.train_limit,
                         eval_limit=budget.eval_limit, augment=False, seed=spec.seed, threads=budget.threads,
                         artifacts=artifacts, run_dir=run_dir)
    stopped = run_dir / BUDGET_NAME
    if (run_dir / RESUME_NAME).exists():
        saved = read_resume(run_dir)
        if stopped.exists() or int(saved["epoch"]) >= budget.epochs:  # finished before: the same weights
            return {"checkpoint": str(run_dir / CHECKPOINT_NAME), "train_run": str(run_dir),
                    "epochs_done": int(saved["epoch"]), "budget_stopped": stopped.exists(), "trained_now": False,
                    "train_seconds": 0.0}
        config.resume = run_dir
    started = time.perf_counter()
    done = {"epochs": 0}

    def watch(event: TrainProgress) -> None:
        if event.phase != "epoch":
            return
        done["epochs"] = event.epoch
        if (budget.minutes is not None and event.epoch < event.epochs
                and time.perf_counter() - started > budget.minutes * 60):
            raise _BudgetReached

    cut = False
    try:
        train_model(config, on_progress=watch)
    except _BudgetReached:
        cut = True
        atomic_write_json(stopped, {"epochs_done": done["epochs"], "epochs": budget.epochs,
                                    "minutes": budget.minutes})
    return {"checkpoint": str(run_dir / CHECKPOINT_NAME), "train_run": str(run_dir), "epochs_done": done["epochs"],
            "budget_stopped": cut, "trained_now": True, "train_seconds": time.perf_counter() - started}


def _export(spec: SweepSpec, params: dict[str, Any], model: str, checkpoint: Path, artifacts: Path,
            data_dir: Path | None) -> dict[str, Any]:
    from toolchain.pipeline import ExportRequest, run_export

    result = run_export(ExportRequest(model=model, checkpoint=checkpoint, dataset=spec.dataset, data_dir=data_dir,
                                      artifacts=artifacts, quant=trial_quant(spec, params),
                                      calibration=spec.export.calibration, eval_count=spec.export.eval_count,
                                      train_if_missing=False, qat=spec.export.qat))
    accuracy = result.manifest.accuracy
    return {"artifact": str(result.folder), "artifact_id": result.folder.name, "export_cached": result.cached,
            "export_seconds": result.seconds, "fp32_top1_host": accuracy.fp32.top1 if accuracy.fp32 else None,
            "int8_top1_host": accuracy.int8.top1 if accuracy.int8 else None}
