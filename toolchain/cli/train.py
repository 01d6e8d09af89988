"""`toolchain train` and `toolchain evaluate`.

torch is imported inside the commands, so `toolchain --help` stays fast. Options of `train` default
to None so that `--resume` can tell what was typed from what the resume file already holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from toolchain.cli.options import (DEFAULT_ARTIFACTS, ArtifactsOption, CheckpointOption, DataDirOption,
                                   JsonOption, OptionalDatasetOption, OptionalModelOption, ThreadsOption)
from toolchain.cli.output import emit_json, info, progress, table, warn
from toolchain.errors import UsageError

if TYPE_CHECKING:
    from toolchain.training.loop import EpochMetrics, TrainPlan, TrainProgress, TrainResult

_OPTIMIZER_HELP = ("SGD (default), Adam, Adamax, Adagrad, Adadelta, ASGD, RMSprop, Rprop or AdaBound. "
                   "Default lr: SGD 0.1, Adam 0.001, Adamax 0.002, Adagrad 0.01, Adadelta 1.0, ASGD 0.01, "
                   "RMSprop 0.001, Rprop 0.01, AdaBound 0.001.")


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _parse_milestones(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--milestones must be comma-separated fractions, got {text!r}",
                         "pass e.g. --milestones 0.3,0.6,0.8 (or '' for a constant learning rate)") from None


def _plan_lines(plan: "TrainPlan") -> list[str]:
    settings = " ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                        for key, value in plan.optimizer_settings.items())
    decay = (f"lr x{plan.gamma:g} after epochs {', '.join(map(str, plan.milestone_epochs))}"
             if plan.milestone_epochs else "constant lr")
    verb = f"resuming after epoch {plan.start_epoch} of" if plan.start_epoch else "training"
    where = (f"{plan.processes} processes ({plan.backend}, {plan.device}) x {plan.threads} threads"
             if plan.processes > 1 else f"{plan.device}, {plan.threads} threads")
    return [f"{verb} {plan.model} on {plan.dataset}: {plan.train_images} train / {plan.eval_images} test "
            f"images, {plan.num_classes} classes, {plan.in_channels} channel(s)",
            f"{plan.optimizer} {settings}; {plan.epochs} epochs, {decay}; {where}",
            f"run folder: {plan.run_dir}"]


def _epoch_line(metrics: "EpochMetrics", epochs: int, eta_s: float | None) -> str:
    top5 = f" top-5 {metrics.test_top5:.2f}%" if metrics.test_top5 is not None else ""
    return (f"epoch {metrics.epoch}/{epochs}  lr {metrics.lr:.4g}  train loss {metrics.train_loss:.4f} "
            f"acc {metrics.train_acc:.2f}%  test loss {metrics.test_loss:.4f} top-1 {metrics.test_top1:.2f}%"
            f"{top5}  {metrics.seconds:.1f} s  {metrics.images_per_s:.0f} img/s{_per_process(metrics)}  "
            f"ETA {_format_seconds(eta_s)}")


def _per_process(metrics: "EpochMetrics") -> str:
    rates = metrics.process_images_per_s
    return f" ({' + '.join(f'{rate:.0f}' for rate in rates)} per process)" if rates else ""


def train(
    model: OptionalModelOption = None,
    dataset: OptionalDatasetOption = None,
    data_dir: DataDirOption = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default 200, as the papers).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size (default 128).")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help=_OPTIMIZER_HELP)] = None,
    lr: Annotated[Optional[float], typer.Option(
        help="Initial learning rate (default: per optimizer).")] = None,
    momentum: Annotated[Optional[float], typer.Option(help="SGD momentum (default 0.9).")] = None,
    nesterov: Annotated[Optional[bool], typer.Option("--nesterov/--no-nesterov",
                                                     help="SGD Nesterov momentum (default on).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="L2 weight decay (default 5e-4).")] = None,
    milestones: Annotated[Optional[str], typer.Option(
        help="Fractions of the epochs after which lr is multiplied by --gamma "
        "(default 0.3,0.6,0.8).")] = None,
    gamma: Annotated[Optional[float], typer.Option(help="Learning-rate decay factor (default 0.2).")] = None,
    train_limit: Annotated[Optional[int], typer.Option(
        help="Train on a fixed random subset of this many images.")] = None,
    eval_limit: Annotated[Optional[int], typer.Option(
        help="Evaluate each epoch on a fixed random subset of this many test images.")] = None,
    augment: Annotated[Optional[bool], typer.Option(
        "--augment/--no-augment", help="Random crop (pad 4) and horizontal flip (default on).")] = None,
    seed: Annotated[Optional[int], typer.Option(
        help="Seed of weights, shuffling and augmentation (default 0).")] = None,
    threads: ThreadsOption = None,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    run_dir: Annotated[Optional[Path], typer.Option(
        help="Run folder (default: ARTIFACTS/train/<model>/<dataset>/<time>/).")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        help="Continue an interrupted run exactly: its run folder or resume.pt.")] = None,
    nproc: Annotated[Optional[int], typer.Option(
        help="Train on this many processes of this machine (DistributedDataParallel: gloo on CPU, NCCL on "
        "GPUs; --batch-size stays the global batch). Under torchrun, leave it out: each process joins "
        "torchrun's group.", min=1)] = None,
    device: Annotated[Optional[str], typer.Option(
        help="auto (default: CUDA when torch sees a GPU), cpu or cuda.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Train a model (the papers' recipe by default): checkpoint, CSV log and curves per epoch."""
    from toolchain.training.distributed import launch_environment, train_in_launched_group, train_processes
    from toolchain.training.loop import RESUME_NAME, TrainConfig, option_flag, resumed_config, train_model

    given: dict[str, Any] = {
        "model": model, "dataset": dataset, "data_dir": data_dir, "epochs": epochs, "batch_size": batch_size,
        "optimizer": optimizer, "lr": lr, "momentum": momentum, "nesterov": nesterov,
        "weight_decay": weight_decay,
        "milestones": None if milestones is None else _parse_milestones(milestones),
        "gamma": gamma, "train_limit": train_limit, "eval_limit": eval_limit, "augment": augment,
        "seed": seed, "threads": threads, "run_dir": run_dir, "device": device}
    given = {key: value for key, value in given.items() if value is not None}
    if resume is not None:
        config = resumed_config(resume, **given)
    elif model is None:
        raise UsageError("--model is required",
                         "pass e.g. --model hps-06-0.5x, or --resume RUN_DIR to continue a run")
    else:
        config = TrainConfig(artifacts=artifacts, **given)
    launch = launch_environment()
    if launch is not None and nproc is not None:
        raise UsageError("--nproc cannot be used under torchrun (RANK and WORLD_SIZE are set)",
                         "let torchrun start the processes (--nproc-per-node), or run without torchrun")
    if launch is not None and launch.rank != 0:  # rank 0 speaks for the group
        train_in_launched_group(config, launch)
        return

    def run_training(on_progress: "Callable[[TrainProgress], None]") -> "TrainResult":
        if launch is not None:
            return train_in_launched_group(config, launch, on_progress)
        if nproc is not None and nproc > 1:
            return train_processes(config, nproc, on_progress)
        return train_model(config, on_progress)

    started: list[Path] = []
    with progress() as bar:
        task = bar.add_task("starting", total=None, status="")

        def show(event: "TrainProgress") -> None:
            if event.phase == "start":
                started.append(event.plan.run_dir)
                for line in _plan_lines(event.plan):
                    info(line)
                for name in ("momentum", "nesterov", "weight_decay"):
                    if name in given and name not in event.plan.optimizer_settings:
                        warn(f"{event.plan.optimizer} has no {name.replace('_', ' ')}: "
                             f"{option_flag(name)} is ignored")
            elif event.phase == "train":
                bar.update(task, description=f"epoch {event.epoch}/{event.epochs}", total=event.batches,
                           completed=event.batch,
                           status=f"loss {event.loss:.4f} acc {event.accuracy:.1f}% "
                                  f"{event.images_per_s:.0f} img/s ETA {_format_seconds(event.eta_s)}")
            elif event.phase == "eval":
                bar.update(task, status="evaluating")
            elif event.phase == "epoch":
                info(_epoch_line(event.metrics, event.epochs, event.eta_s))
                bar.reset(task, status="")

        try:
            result = run_training(show)
        except KeyboardInterrupt:
            if started and (started[0] / RESUME_NAME).is_file():
                info(f"stopped; the last finished epoch is saved. Continue with: "
                     f"toolchain train --resume {started[0]}")
            raise
    if json_output:
        emit_json(result.to_dict())
        return
    metrics = result.info.metrics
    top5 = f"{metrics['test_top5']:.2f}" if "test_top5" in metrics else "-"
    table(f"{result.info.model} on {result.info.dataset}, {result.info.epoch} epochs",
          ["checkpoint", "test top-1 %", "test top-5 %", "best top-1 %", "best epoch", "run folder"],
          [(result.checkpoint, f"{metrics['test_top1']:.2f}", top5, f"{metrics['best_test_top1']:.2f}",
            metrics["best_epoch"], result.run_dir)],
          right_align=["test top-1 %", "test top-5 %", "best top-1 %", "best epoch"])


def evaluate(
    checkpoint: CheckpointOption = None,
    model: OptionalModelOption = None,
    dataset: OptionalDatasetOption = None,
    data_dir: DataDirOption = None,
    split: Annotated[str, typer.Option(help="train or test.")] = "test",
    limit: Annotated[Optional[int], typer.Option(
        help="Evaluate a fixed random subset of this many images (the same as train --eval-limit).",
        min=1)] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.", min=1)] = 256,
    threads: ThreadsOption = None,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    json_output: JsonOption = False,
) -> None:
    """Top-1 (top-5 for over 10 classes) of a checkpoint, or of the newest one trained for --model."""
    import torch

    from toolchain.training.checkpoints import find_latest_checkpoint
    from toolchain.errors import CheckpointError
    from toolchain.training.loop import evaluate_checkpoint

    if checkpoint is None:
        if model is None:
            raise UsageError("pass --checkpoint PATH, or --model NAME for its newest trained checkpoint",
                             "e.g. toolchain evaluate --checkpoint artifacts/train/.../checkpoint.pt")
        checkpoint = find_latest_checkpoint(artifacts, model, dataset or "fashion-mnist")
        if checkpoint is None:
            raise CheckpointError(f"no trained checkpoint of {model} on {dataset or 'fashion-mnist'} "
                                  f"under {artifacts}", f"train one with `toolchain train --model {model}`, "
                                  "or pass --checkpoint PATH")
    if threads:
        torch.set_num_threads(threads)
    result = evaluate_checkpoint(checkpoint, model, dataset, data_dir, split, limit, batch_size)
    if json_output:
        emit_json(result.to_dict())
        return
    accuracy = result.accuracy
    top5 = f"{accuracy.top5:.2f}" if accuracy.top5 is not None else "-"
    table(f"{result.model} on {result.dataset} {result.split}",
          ["checkpoint", "images", "top-1 %", "top-5 %", "loss"],
          [(result.checkpoint, accuracy.count, f"{accuracy.top1:.2f}", top5, f"{result.loss:.4f}")],
          right_align=["images", "top-1 %", "top-5 %", "loss"])


def register(app: typer.Typer) -> None:
    """Add `train` and `evaluate` to the toolchain app."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)
