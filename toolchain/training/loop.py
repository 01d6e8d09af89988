"""Training with the papers' recipe as the default, resumable exactly, every file written atomically.

Default recipe (HPS / Shallow SqueezeNext papers): SGD with Nesterov momentum 0.9, lr 0.1, batch 128,
weight decay 5e-4, learning rate x0.2 at 30 / 60 / 80 % of the epochs (60 / 120 / 160 of 200),
random crop (pad 4) and horizontal flip. A run folder ``artifacts/train/<model>/<dataset>/<run-id>/``
holds, rewritten after every epoch:

    checkpoint.pt / .json   the last epoch's state_dict and its sidecar (metrics incl. best test top-1)
    metrics.csv             one row per epoch
    curves.png              loss and accuracy curves
    resume.pt               model, optimizer, scheduler, RNG states and history for ``--resume``

The library never prints; progress goes to an optional callback as `TrainProgress` events.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.nn import functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import MultiStepLR

from toolchain.training.checkpoints import CHECKPOINT_NAME, CheckpointInfo, load_checkpoint
from toolchain.data import ImageDataset, iterate_batches, iterate_shards, load_dataset
from toolchain.errors import CheckpointError, DatasetError, TrainingError, UsageError
from toolchain.evaluators.accuracy import Accuracy, accuracy_from_logits
from toolchain.evaluators.reference import torch_logits
from toolchain.training.runs import (CURVES_NAME, METRICS_NAME, RESUME_NAME, new_run_dir, read_resume, restore,
                                    resume_file, save_epoch)
from toolchain.models import resolve
from toolchain.training.optim import build_optimizer, optimizer_arguments, optimizer_spec

if TYPE_CHECKING:
    from toolchain.training.distributed import ProcessGroup

# The running loss is read (one sync) about this many times per epoch, not after every batch.
READS_PER_EPOCH = 100
# Test subsets (--eval-limit, `evaluate --limit`) are the same random images for every run.
EVAL_SUBSET_SEED = 0
_PATH_FIELDS = ("data_dir", "artifacts", "run_dir", "resume")
# Settings that decide the weights a run produces: a resumed run must keep every one of them.
_TRAJECTORY_FIELDS = ("model", "dataset", "epochs", "batch_size", "optimizer", "lr", "momentum",
                      "nesterov", "weight_decay", "milestones", "gamma", "train_limit", "eval_limit",
                      "augment", "seed")


@dataclass
class TrainConfig:
    """Everything that defines a training run (the papers' recipe by default)."""

    model: str
    dataset: str = "fashion-mnist"
    data_dir: Path | None = None
    epochs: int = 200
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float | None = None  # None: the optimizer's default (0.1 for SGD), see toolchain.optim
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.3, 0.6, 0.8)  # fractions of the epochs
    gamma: float = 0.2
    train_limit: int | None = None  # train on a deterministic random subset of this many images
    eval_limit: int | None = None  # evaluate each epoch on this many test images
    augment: bool = True  # random crop (pad 4) + horizontal flip
    seed: int = 0
    threads: int | None = None  # torch intra-op threads (per process; default with --nproc: cores / processes)
    device: str = "auto"  # auto (CUDA when torch sees a GPU), cpu or cuda
    artifacts: Path = Path("artifacts")  # run folder: artifacts/train/<model>/<dataset>/<run-id>/
    run_dir: Path | None = None  # explicit run folder instead
    resume: Path | None = None  # a resume.pt (or its run folder) to continue exactly

    def validate(self) -> None:
        """Fail with a usage error naming the option if a setting cannot work."""
        from toolchain.training.distributed import DEVICES

        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}",
                             "pass --device auto (CUDA when there is a GPU), cpu or cuda")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "train_limit": self.train_limit,
                    "eval_limit": self.eval_limit, "threads": self.threads}
        for name, value in positive.items():
            if value is not None and value < 1:
                raise UsageError(f"{option_flag(name)} must be at least 1, got {value}",
                                 f"pass a positive {option_flag(name)}")
        milestones = list(self.milestones)
        if any(not 0 < m < 1 for m in milestones) or milestones != sorted(milestones):
            raise UsageError(f"milestones must be increasing fractions of the epochs in (0, 1), "
                             f"got {milestones}",
                             "pass e.g. --milestones 0.3,0.6,0.8 (the papers' 60/120/160 of 200 epochs)")
        if not 0 < self.gamma <= 1:
            raise UsageError(f"--gamma must be in (0, 1], got {self.gamma}", "pass e.g. --gamma 0.2")
        optimizer_arguments(self.optimizer, self.lr, self.momentum, self.nesterov, self.weight_decay)

    def milestone_epochs(self) -> list[int]:
        """The epochs after which the learning rate is multiplied by gamma (repeated if they coincide)."""
        epochs = [round(m * self.epochs) for m in self.milestones]
        return [e for e in epochs if 0 < e < self.epochs]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (paths as strings), as recorded in the sidecar and resume file."""
        data = asdict(self)
        data["milestones"] = list(self.milestones)
        for name in _PATH_FIELDS:
            data[name] = None if data[name] is None else str(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in _PATH_FIELDS:
            if values.get(name) is not None:
                values[name] = Path(values[name])
        if "milestones" in values:
            values["milestones"] = tuple(values["milestones"])
        return cls(**values)


@dataclass(frozen=True)
class EpochMetrics:
    """One row of metrics.csv: what an epoch did. ``seconds`` covers training and evaluation;
    ``images_per_s`` is the training throughput (of all processes together); ``process_images_per_s``
    each process's own, by rank, when several trained (None on one process)."""

    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    test_loss: float
    test_top1: float
    test_top5: float | None
    seconds: float
    images_per_s: float
    process_images_per_s: tuple[float, ...] | None = None


@dataclass(frozen=True)
class TrainPlan:
    """What a run is about to do, known before the first batch (sent with the "start" event)."""

    model: str
    dataset: str
    train_images: int
    eval_images: int
    num_classes: int
    in_channels: int
    start_epoch: int
    epochs: int
    optimizer: str
    optimizer_settings: dict[str, Any]
    milestone_epochs: list[int]
    gamma: float
    threads: int
    run_dir: Path
    processes: int = 1
    device: str = "cpu"
    backend: str | None = None  # gloo or nccl with several processes


@dataclass(frozen=True)
class TrainProgress:
    """A progress event. ``phase``: "start" (``plan`` set), "train" (running loss/accuracy of the
    epoch so far), "eval" (evaluation begins), "epoch" (``metrics`` of the finished epoch)."""

    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float
    accuracy: float
    images_per_s: float
    eta_s: float | None
    phase: str
    plan: TrainPlan | None = None
    metrics: EpochMetrics | None = None


@dataclass
class TrainResult:
    """A finished run: its folder, final checkpoint, sidecar and per-epoch history."""

    run_dir: Path
    checkpoint: Path
    info: CheckpointInfo
    history: list[EpochMetrics] = field(default_factory=list)

    @property
    def resume_file(self) -> Path:
        return self.run_dir / RESUME_NAME

    @property
    def metrics_csv(self) -> Path:
        return self.run_dir / METRICS_NAME

    @property
    def curves(self) -> Path:
        return self.run_dir / CURVES_NAME

    def to_dict(self) -> dict[str, Any]:
        """The summary `toolchain train --json` prints."""
        return {"run_dir": str(self.run_dir), "checkpoint": str(self.checkpoint),
                "sidecar": str(self.checkpoint.with_suffix(".json")), "resume_file": str(self.resume_file),
                "metrics_csv": str(self.metrics_csv), "curves": str(self.curves),
                "info": self.info.to_dict(), "history": [asdict(m) for m in self.history]}


@dataclass(frozen=True)
class EpochStats:
    """Running totals of a pass over training batches (of every process, with several)."""

    loss: float
    accuracy: float
    images: int
    seconds: float
    process_images_per_s: tuple[float, ...] | None = None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def fit_batches(model: nn.Module, optimizer: Optimizer, batches: Iterable[tuple[torch.Tensor, ...]],
                total: int, epoch: int = 1,
                on_batch: Callable[[int, EpochStats], None] | None = None,
                group: "ProcessGroup | None" = None) -> EpochStats:
    """One training pass over ``batches`` (``total`` of them): cross-entropy, backward, step.

    Loss and accuracy accumulate in tensors and are read about `READS_PER_EPOCH` times per pass;
    each read checks the loss is finite and calls ``on_batch(batch_number, stats)``.
    With a ``group`` (``model`` wrapped in DistributedDataParallel), ``batches`` are this rank's
    `iterate_shards` (inputs, labels, images in the whole batch) and every read sums over the ranks.
    """
    model.train()
    read_every = max(1, total // READS_PER_EPOCH)
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    images, index = 0, 0
    start = time.perf_counter()
    for index, (inputs, labels, *whole) in enumerate(batches, 1):
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        if group is None:
            loss = F.cross_entropy(logits, labels)
            loss_sum += loss.detach().cpu() * len(labels)
        else:
            # this shard's share of the whole batch's mean: DDP averages the ranks' gradients, so the
            # step is the one-process step even where the shards differ in size by one image
            summed = F.cross_entropy(logits, labels, reduction="sum")
            loss = summed * (group.world_size / whole[0])
            loss_sum += summed.detach().cpu()
        loss.backward()
        optimizer.step()
        correct += (logits.detach().argmax(1) == labels).sum().cpu()
        images += len(labels)
        if index % read_every == 0 or index == total:
            stats = _running_stats(loss_sum, correct, images, start, group)
            if not math.isfinite(stats.loss):
                lr = optimizer.param_groups[0]["lr"]
                raise TrainingError(f"training diverged in epoch {epoch} (batch {index}): "
                                    f"the loss became {stats.loss}",
                                    f"lower the learning rate, e.g. --lr {lr / 10:g} (it was {lr:g})")
            if on_batch is not None:
                on_batch(index, stats)
    if images == 0:
        raise TrainingError("no training batches", "the training set is empty")
    final = _running_stats(loss_sum, correct, images, start, group)
    if group is None:
        return final
    own = torch.zeros(group.world_size, dtype=torch.float64)
    own[group.rank] = images / final.seconds
    return replace(final, process_images_per_s=tuple(group.sum(own).tolist()))


def _running_stats(loss_sum: torch.Tensor, correct: torch.Tensor, images: int, start: float,
                   group: "ProcessGroup | None" = None) -> EpochStats:
    if group is not None:
        totals = group.sum(torch.stack([loss_sum, correct.to(torch.float64),
                                        torch.tensor(float(images), dtype=torch.float64)]))
        loss_sum, correct, images = totals[0], totals[1], int(totals[2].item())
    return EpochStats(loss=loss_sum.item() / images, accuracy=100.0 * correct.item() / images,
                      images=images, seconds=time.perf_counter() - start)


def resumed_config(path: Path, **changes: Any) -> TrainConfig:
    """The configuration a resume file was written with, with ``changes`` applied (e.g. threads)."""
    saved = TrainConfig.from_dict(read_resume(path)["config"])
    return replace(saved, resume=Path(path), **changes)


def train_model(config: TrainConfig,
                on_progress: Callable[[TrainProgress], None] | None = None) -> TrainResult:
    """Train (or, with ``config.resume``, continue) a model; returns the final checkpoint and history.

    One process, on the GPU where torch sees one (``config.device``); several: `train_processes`.
    """
    from toolchain.training.distributed import select_device

    config.validate()
    _, device = select_device(config.device, torch.cuda.is_available(), torch.cuda.device_count())
    saved = read_resume(config.resume) if config.resume is not None else None
    if saved is not None:
        _check_same_run(config, TrainConfig.from_dict(saved["config"]), resume_file(config.resume))
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, saved, on_progress or (lambda event: None), device, None)
    finally:
        torch.set_num_threads(threads_before)


def train_rank(config: TrainConfig, group: "ProcessGroup",
               on_progress: Callable[[TrainProgress], None] | None = None) -> TrainResult | None:
    """Train as one rank of ``group`` (DistributedDataParallel); rank 0 returns the result, the others None.

    Rank 0 alone reads the resume file (and sends its state to the others), evaluates and writes.
    """
    from toolchain.training.distributed import available_cores, threads_per_process

    config.validate()
    shared: dict[str, Any] = {}
    if group.is_main:
        try:
            saved = read_resume(config.resume) if config.resume is not None else None
            if saved is not None:
                _check_same_run(config, TrainConfig.from_dict(saved["config"]), resume_file(config.resume))
            shared = {"saved": saved}
        except (TrainingError, UsageError) as error:
            shared = {"error": (type(error).__name__, error.message, error.hint)}
            group.broadcast(shared)
            raise
    shared = group.broadcast(shared)
    if "error" in shared:  # rank 0 raised it already: the others stop with the same words
        kind, message, hint = shared["error"]
        raise (UsageError if kind == "UsageError" else TrainingError)(message, hint)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads or threads_per_process(available_cores(), group.local_world_size))
    try:
        return _train(config, shared["saved"], on_progress or (lambda event: None), group.device, group)
    finally:
        torch.set_num_threads(threads_before)


def _train(config: TrainConfig, saved: dict[str, Any] | None, emit: Callable[[TrainProgress], None],
           device: str, group: "ProcessGroup | None") -> TrainResult | None:
    main = group is None or group.is_main
    spec = resolve(config.model)
    train_set, test_set = _load_data(config)
    if group is not None:
        _check_shards(train_set, config.batch_size, group.world_size)
    torch.manual_seed(config.seed)
    model = spec.build(num_classes=train_set.num_classes, in_channels=train_set.channels)
    settings = optimizer_arguments(config.optimizer, config.lr, config.momentum, config.nesterov,
                                   config.weight_decay)
    optimizer = build_optimizer(config.optimizer, model.parameters(), config.lr, config.momentum,
                                config.nesterov, config.weight_decay)
    scheduler = MultiStepLR(optimizer, milestones=config.milestone_epochs(), gamma=config.gamma)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[EpochMetrics] = []
    start_epoch = 0
    if saved is not None:
        # ranks above 0 never open the run folder (on another host it is not there): the path names it
        run_dir = resume_file(config.resume).parent if main else Path(config.resume)
        start_epoch = restore(saved, model, optimizer, scheduler, generator, history, run_dir)
    else:
        run_dir = new_run_dir(config, spec.name) if main else Path()
    model.to(device)  # after restore: the optimizer's state follows its parameters' device on load
    trained: nn.Module = model
    if group is not None:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=None if device == "cpu" else [group.local_rank])
    processes = 1 if group is None else group.world_size
    plan = TrainPlan(model=spec.name, dataset=train_set.name, train_images=len(train_set),
                     eval_images=len(test_set), num_classes=train_set.num_classes,
                     in_channels=train_set.channels, start_epoch=start_epoch, epochs=config.epochs,
                     optimizer=optimizer_spec(config.optimizer).name, optimizer_settings=settings,
                     milestone_epochs=config.milestone_epochs(), gamma=config.gamma,
                     threads=torch.get_num_threads(), run_dir=run_dir, processes=processes, device=device,
                     backend=None if group is None else group.backend)
    batches = math.ceil(len(train_set) / config.batch_size)
    emit(TrainProgress(start_epoch, config.epochs, 0, batches, math.nan, math.nan, 0.0, None, "start",
                       plan=plan))
    training_record = {**config.to_dict(), "optimizer_name": plan.optimizer, "optimizer_settings": settings,
                       "milestone_epochs": plan.milestone_epochs, "train_images": plan.train_images,
                       "eval_images": plan.eval_images, "threads": plan.threads, "processes": processes,
                       "device": device, "backend": plan.backend}
    eval_seconds = 0.0
    info = None
    for epoch in range(start_epoch + 1, config.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        epoch_start = time.perf_counter()
        if not main:
            # dropout draws from the global generator: each rank its own stream (rank 0's is the saved
            # one), set from (seed, epoch, rank) so that a resumed run draws what the first would have
            torch.manual_seed(hash((config.seed, epoch, group.rank)) & 0x7FFF_FFFF_FFFF_FFFF)

        def report(batch: int, stats: EpochStats, epoch: int = epoch) -> None:
            remaining = len(train_set) - stats.images + (config.epochs - epoch) * len(train_set)
            eta = remaining / max(stats.images_per_s, 1e-9) + eval_seconds * (config.epochs - epoch + 1)
            emit(TrainProgress(epoch, config.epochs, batch, batches, stats.loss, stats.accuracy,
                               stats.images_per_s, eta, "train"))

        if group is None:
            shuffled = iterate_batches(train_set, config.batch_size, shuffle=True, augment=config.augment,
                                       generator=generator)
        else:
            shuffled = iterate_shards(train_set, config.batch_size, group.rank, group.world_size, shuffle=True,
                                      augment=config.augment, generator=generator)
        stats = fit_batches(trained, optimizer, _on_device(shuffled, device), total=batches, epoch=epoch,
                            on_batch=report if main else None, group=group)
        scheduler.step()
        if not main:  # rank 0 evaluates and saves; the others go on and wait for it in the next step
            continue
        emit(TrainProgress(epoch, config.epochs, batches, batches, stats.loss, stats.accuracy,
                           stats.images_per_s, None, "eval"))
        eval_start = time.perf_counter()
        test_loss, accuracy = evaluate_with_loss(model, test_set)
        eval_seconds = time.perf_counter() - eval_start
        metrics = EpochMetrics(epoch=epoch, lr=lr, train_loss=stats.loss, train_acc=stats.accuracy,
                               test_loss=test_loss, test_top1=accuracy.top1, test_top5=accuracy.top5,
                               seconds=time.perf_counter() - epoch_start, images_per_s=stats.images_per_s,
                               process_images_per_s=stats.process_images_per_s)
        history.append(metrics)
        info = save_epoch(run_dir, model, optimizer, scheduler, generator, history, config,
                           spec.name, train_set, training_record)
        eta = (config.epochs - epoch) * metrics.seconds
        emit(TrainProgress(epoch, config.epochs, batches, batches, stats.loss, stats.accuracy,
                           stats.images_per_s, eta, "epoch", metrics=metrics))
    if not main:
        return None
    return TrainResult(run_dir=run_dir, checkpoint=run_dir / CHECKPOINT_NAME, info=info, history=history)


def _on_device(batches: Iterable[tuple[Any, ...]], device: str) -> Iterator[tuple[Any, ...]]:
    for batch in batches:
        yield batch if device == "cpu" else tuple(
            part.to(device, non_blocking=True) if isinstance(part, torch.Tensor) else part for part in batch)


def _check_shards(train_set: ImageDataset, batch_size: int, world_size: int) -> None:
    last = len(train_set) % batch_size or batch_size
    smallest = min(batch_size, last, len(train_set))
    if smallest < world_size:
        raise UsageError(f"a batch of {smallest} image(s) cannot be shared by {world_size} processes "
                         f"({len(train_set)} training images in batches of {batch_size})",
                         "pass a --batch-size (or --train-limit) that leaves every batch at least one image "
                         "per process, or fewer processes")


def evaluate_with_loss(model: nn.Module, dataset: ImageDataset, batch_size: int = 256
                       ) -> tuple[float, Accuracy]:
    """(mean cross-entropy, Accuracy) of a model on a dataset; top-5 for more than 10 classes."""
    logits = torch_logits(model, dataset, batch_size)
    loss = F.cross_entropy(torch.from_numpy(logits), dataset.labels).item()
    return loss, accuracy_from_logits(logits, dataset.labels.numpy(), top5=dataset.num_classes > 10)


@dataclass(frozen=True)
class CheckpointEvaluation:
    """How well a checkpoint does on a dataset split."""

    checkpoint: Path
    sha256: str
    model: str
    dataset: str
    split: str
    loss: float
    accuracy: Accuracy
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), "sha256": self.sha256, "model": self.model,
                "dataset": self.dataset, "split": self.split, "loss": self.loss, **self.accuracy.to_dict(),
                "mean": list(self.mean), "std": list(self.std)}


def evaluate_checkpoint(path: Path, model: str | None = None, dataset: str | None = None,
                        data_dir: Path | None = None, split: str = "test", limit: int | None = None,
                        batch_size: int = 256) -> CheckpointEvaluation:
    """Top-1 (top-5 for more than 10 classes) of a checkpoint on a split.

    By default the sidecar's dataset, data folder and normalisation are used; a state_dict without
    sidecar needs ``model`` and ``dataset`` and is fed the dataset's standard normalisation.
    ``limit`` evaluates the same random subset `--eval-limit` uses during training.
    """
    loaded = load_checkpoint(Path(path), model)
    info = loaded.info
    if dataset is None:
        if info is None:
            raise CheckpointError(f"checkpoint {path} has no sidecar naming its dataset",
                                  "pass --dataset (and --data-dir) for a state_dict from elsewhere")
        dataset = info.dataset
    if data_dir is None and info is not None and dataset == info.dataset:
        data_dir = info.training.get("data_dir")
    data = load_dataset(dataset, split, data_dir)
    if limit is not None:
        data = data.sample(limit, EVAL_SUBSET_SEED)
    first_conv = next(m for m in loaded.model.modules() if isinstance(m, nn.Conv2d))
    if first_conv.in_channels != data.channels:
        raise CheckpointError(f"{loaded.spec.name} takes {first_conv.in_channels}-channel images, "
                              f"{dataset} has {data.channels}",
                              "evaluate it on the dataset it was trained on")
    if info is not None:
        data = replace(data, mean=tuple(info.mean), std=tuple(info.std))
    with torch.no_grad():
        classes = loaded.model(data.normalize(data.images[:1])).shape[1]
    if classes != data.num_classes:
        raise CheckpointError(f"{loaded.spec.name} from {path} has {classes} classes, {dataset} has "
                              f"{data.num_classes}", "evaluate it on the dataset it was trained on")
    loss, accuracy = evaluate_with_loss(loaded.model, data, batch_size)
    return CheckpointEvaluation(checkpoint=Path(path), sha256=loaded.sha256, model=loaded.spec.name,
                                dataset=data.name, split=split, loss=loss, accuracy=accuracy,
                                mean=data.mean, std=data.std)


def option_flag(name: str) -> str:
    """The command-line flag of a TrainConfig field (batch_size -> --batch-size), for messages."""
    return "--" + name.replace("_", "-")


def _check_same_run(config: TrainConfig, saved: TrainConfig, file: Path) -> None:
    ours, theirs = _trajectory(config), _trajectory(saved)
    for name in _TRAJECTORY_FIELDS:
        if ours[name] != theirs[name]:
            raise TrainingError(f"{file} continues a run with {option_flag(name)} {theirs[name]}, "
                                f"not {ours[name]}",
                                "leave the option out (--resume reuses the saved settings) or start a new run")
    if config.run_dir is not None and Path(config.run_dir).resolve() != file.parent.resolve():
        raise UsageError(f"--run-dir {config.run_dir} and --resume {file} name different runs",
                         "a resumed run continues in its own folder; drop --run-dir")


def _trajectory(config: TrainConfig) -> dict[str, Any]:
    values = {name: getattr(config, name) for name in _TRAJECTORY_FIELDS}
    values["model"] = resolve(config.model).name
    values["optimizer"] = optimizer_spec(config.optimizer).name
    values["lr"] = optimizer_arguments(config.optimizer, config.lr, config.momentum, config.nesterov,
                                       config.weight_decay)["lr"]
    values["milestones"] = ",".join(f"{m:g}" for m in config.milestones)
    return values


def _load_data(config: TrainConfig) -> tuple[ImageDataset, ImageDataset]:
    train_set = load_dataset(config.dataset, "train", config.data_dir)
    if config.train_limit is not None:
        train_set = train_set.sample(config.train_limit, config.seed)
    test_set = load_dataset(config.dataset, "test", config.data_dir)
    if config.eval_limit is not None:
        test_set = test_set.sample(config.eval_limit, EVAL_SUBSET_SEED)
    if (test_set.num_classes, test_set.channels) != (train_set.num_classes, train_set.channels):
        raise DatasetError(f"{config.dataset}: the test split has {test_set.num_classes} classes x "
                           f"{test_set.channels} channels, the train split {train_set.num_classes} x "
                           f"{train_set.channels}", "both splits must hold the same classes and image kind")
    # Evaluate with the training normalisation (an image folder's test split has its own statistics).
    return train_set, replace(test_set, mean=train_set.mean, std=train_set.std)
