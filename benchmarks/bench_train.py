"""Training speed: the toolchain's loop vs a bare PyTorch loop, and seconds per Fashion-MNIST epoch.

Figures (written to benchmarks/results/train.json with the machine they were measured on):

- loop_throughput_ratio: images/s of `toolchain.training.loop.fit_batches` over the bare loop
  ``for x, y in batches: opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()``,
  same model (hps-06-0.5x, same initial weights), same optimizer settings, the same pre-built batches,
  measured alternately in this run (median of several rounds). Goal >= 0.9.
- pipeline_throughput_ratio: training images/s of a whole `train_model` epoch over the bare loop run
  over the same stream (all 60,000 images, shuffled, augmented and normalised on the fly by the same
  `iterate_batches`, same seed), so both pay for the data and only the loop around it differs; the bare
  epoch runs just before and just after the `train_model` epoch and their mean is the reference, so a
  minute-long drift of a shared machine's speed lands on both sides. Goal >= 0.9.
- seconds_per_epoch: one full epoch of hps-06-0.5x on Fashion-MNIST (60,000 training images plus the
  10,000-image test evaluation), the papers' "model speed". Goal <= 150 s on 2 cores.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import torch
from torch.nn import functional as F

from machine_info import cpu_model  # benchmarks/machine_info.py (the script's folder)
from toolchain.data import ImageDataset, iterate_batches, load_dataset
from toolchain.fsutil import atomic_write_json
from toolchain.models import create_model
from toolchain.training.optim import build_optimizer
from toolchain.training.loop import TrainConfig, fit_batches, train_model

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "train.json"
MODEL = "hps-06-0.5x"
BATCH_SIZE = 128
LOOP_BATCHES = 40  # 5,120 images per timed pass
ROUNDS = 5
GOALS = {"loop_throughput_ratio": (">=", 0.9), "pipeline_throughput_ratio": (">=", 0.9),
         "seconds_per_epoch": ("<=", 150.0)}


def machine() -> dict:
    """What the figures were measured on."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform()}


def bare_loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The reference: the plainest PyTorch training loop, over a list or a stream of batches; returns images/s."""
    model.train()
    start = time.perf_counter()
    images = 0
    for x, y in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        images += len(y)
    return images / (time.perf_counter() - start)


def toolchain_loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The loop `train_model` runs, on the same batches; returns images/s."""
    return fit_batches(model, optimizer, batches, total=len(batches)).images_per_s


def compare_loops(train_set: ImageDataset) -> dict:
    batches = list(iterate_batches(train_set, BATCH_SIZE, shuffle=True, augment=True,
                                   generator=torch.Generator().manual_seed(0)))[:LOOP_BATCHES]
    torch.manual_seed(0)
    initial = create_model(MODEL, num_classes=train_set.num_classes, in_channels=train_set.channels)
    runners = {}
    for name in ("toolchain", "bare"):
        model = copy.deepcopy(initial)
        runners[name] = (model, build_optimizer("sgd", model.parameters()))
    loops = {"toolchain": toolchain_loop, "bare": bare_loop}
    for name, loop in loops.items():  # warm-up pass each
        loop(*runners[name], batches[:5])
    rates: dict[str, list[float]] = {"toolchain": [], "bare": []}
    for round_index in range(ROUNDS):
        # alternate which loop goes first, so a drift in machine speed does not favour either
        order = ("toolchain", "bare") if round_index % 2 == 0 else ("bare", "toolchain")
        for name in order:
            rates[name].append(loops[name](*runners[name], batches))
    return {name: {"rounds_images_per_s": values, "median_images_per_s": statistics.median(values)}
            for name, values in rates.items()}


def bare_epoch(train_set: ImageDataset) -> dict:
    """The bare loop over one whole streamed epoch, as `train_model` draws it (same seed, same augmentation)."""
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=train_set.num_classes, in_channels=train_set.channels)
    stream = iterate_batches(train_set, BATCH_SIZE, shuffle=True, augment=True,
                             generator=torch.Generator().manual_seed(0))
    rate = bare_loop(model, build_optimizer("sgd", model.parameters()), stream)
    return {"seconds": len(train_set) / rate, "images": len(train_set), "images_per_s": rate}


def one_epoch() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        result = train_model(TrainConfig(model=MODEL, epochs=1, run_dir=Path(folder) / "run"))
    metrics = result.history[0]
    return {"seconds": metrics.seconds, "train_images_per_s": metrics.images_per_s,
            "train_loss": metrics.train_loss, "test_top1": metrics.test_top1,
            "train_images": result.info.training["train_images"],
            "eval_images": result.info.training["eval_images"]}


def figure(name: str, value: float, unit: str) -> dict:
    comparison, goal = GOALS[name]
    passed = value >= goal if comparison == ">=" else value <= goal
    return {"name": name, "value": round(value, 4), "unit": unit, "goal": f"{comparison} {goal:g}",
            "pass": passed}


def main() -> int:
    """Measure and write benchmarks/results/train.json; a missed goal is recorded and printed, not an error
    (as in the other benchmarks: the file is the verdict, the exit status says whether it could measure)."""
    train_set = load_dataset("fashion-mnist", "train")
    print(f"bench_train: {MODEL}, {LOOP_BATCHES} batches of {BATCH_SIZE}, {ROUNDS} rounds per loop",
          file=sys.stderr, flush=True)
    loops = compare_loops(train_set)
    bare = loops["bare"]["median_images_per_s"]
    print(f"bench_train: loop {loops['toolchain']['median_images_per_s']:.0f} img/s "
          f"vs bare {bare:.0f} img/s; "
          "timing one full epoch, then the bare loop over the same streamed epoch", file=sys.stderr, flush=True)
    before = bare_epoch(train_set)
    epoch = one_epoch()
    after = bare_epoch(train_set)
    bare_stream = {"before": before, "after": after,
                   "images_per_s": (before["images_per_s"] + after["images_per_s"]) / 2}
    figures = [figure("loop_throughput_ratio", loops["toolchain"]["median_images_per_s"] / bare, "x"),
               figure("pipeline_throughput_ratio", epoch["train_images_per_s"] / bare_stream["images_per_s"], "x"),
               figure("seconds_per_epoch", epoch["seconds"], "s")]
    atomic_write_json(RESULT, {
        "benchmark": "train", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "model": MODEL, "dataset": "fashion-mnist", "batch_size": BATCH_SIZE,
        "figures": figures, "loops": loops, "epoch": epoch, "bare_epoch": bare_stream})
    for item in figures:
        print(f"bench_train: {item['name']} = {item['value']:g} {item['unit']} (goal {item['goal']}): "
              f"{'pass' if item['pass'] else 'MISSED'}", file=sys.stderr)
    print(f"bench_train: wrote {RESULT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
