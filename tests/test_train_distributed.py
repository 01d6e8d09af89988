"""Training on several processes: real torch.distributed (gloo on 127.0.0.1), real Fashion-MNIST, real export.

The CUDA/NCCL path is not exercised here (no GPU on the machines this suite runs on): its device selection
is tested as logic, which is all a CPU machine can check honestly.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.fixtures.data import assert_clear_error
from tests.test_cli_train import toolchain  # noqa: F401  (fixture)
from toolchain.data import iterate_batches, iterate_shards, load_dataset
from toolchain.errors import TrainingError, UsageError
from toolchain.training.checkpoints import read_info
from toolchain.training.distributed import (launch_environment, select_device, threads_per_process,
                                            train_processes)
from toolchain.training.loop import TrainConfig, TrainProgress, fit_batches, train_model
from toolchain.training.optim import build_optimizer

# hps-06-0.25x, one epoch of 3,072 Fashion-MNIST images in batches of 64 (48 steps, 32 images per rank).
CURVE = dict(model="hps-06-0.25x", epochs=1, batch_size=64, train_limit=3072, eval_limit=256)
# Measured (AMD EPYC, 2 cores): the two running-loss curves differ by at most 0.08 nats, as much as two
# one-process runs with different seeds do. The step is the same (same images, same augmentation, the
# gradient of the whole batch's mean), but the forward pass is not: BatchNorm normalises each rank's 32
# images by their own statistics and dropout draws its masks per process. The exact part of the claim,
# identical steps, is checked on a network without BatchNorm or dropout below, to 1e-5.
CURVE_TOLERANCE = 0.15
SMALL = dict(model="hps-06-0.25x", epochs=2, batch_size=32, train_limit=320, eval_limit=128)


def _curve(config: TrainConfig, nproc: int) -> tuple[object, list[tuple[int, float]]]:
    events: list[tuple[int, float]] = []

    def record(event: TrainProgress) -> None:
        if event.phase == "train":
            events.append((event.batch, event.loss))

    result = train_processes(config, nproc, record) if nproc > 1 else train_model(config, record)
    return result, events


@pytest.fixture(scope="module")
def curves(tmp_path_factory, fashion_mnist_root):
    folder = tmp_path_factory.mktemp("ddp-curves")
    config = TrainConfig(data_dir=fashion_mnist_root, **CURVE)
    one = _curve(replace(config, run_dir=folder / "one", threads=2), 1)
    two = _curve(replace(config, run_dir=folder / "two"), 2)
    return one, two


def test_two_gloo_processes_follow_the_one_process_loss_curve(curves):
    (one, one_curve), (two, two_curve) = curves
    assert [batch for batch, _ in one_curve] == [batch for batch, _ in two_curve]  # same reads, same batches
    gaps = [abs(a - b) for (_, a), (_, b) in zip(one_curve, two_curve)]
    assert max(gaps) <= CURVE_TOLERANCE, gaps
    for result in (one, two):  # both learned: the last running loss is well below chance (ln 10)
        assert result.history[-1].train_loss < math.log(10) - 0.25
    assert abs(one.history[-1].train_loss - two.history[-1].train_loss) <= CURVE_TOLERANCE


def test_throughput_of_each_process_is_in_the_metrics(curves):
    (one, _), (two, _) = curves
    metrics = two.history[-1]
    assert len(metrics.process_images_per_s) == 2 and all(rate > 0 for rate in metrics.process_images_per_s)
    assert one.history[-1].process_images_per_s is None
    with two.metrics_csv.open() as handle:
        row = next(csv.DictReader(handle))
    assert row["processes"] == "2" and len(row["process_images_per_s"].split()) == 2
    info = read_info(two.checkpoint)
    assert (info.training["processes"], info.training["backend"], info.training["device"]) == (2, "gloo", "cpu")
    assert info.training["train_images"] == 3072  # the whole subset: the shards cover it once per epoch


def test_rank_0_writes_one_checkpoint_and_export_loads_it(curves, toolchain, tmp_path):  # noqa: F811
    _, (two, _) = curves
    names = sorted(path.name for path in two.run_dir.iterdir())
    assert names == ["checkpoint.json", "checkpoint.pt", "curves.png", "metrics.csv", "resume.pt"]
    made = toolchain("export", "--model", "hps-06-0.25x", "--checkpoint", two.checkpoint, "--artifacts", tmp_path, "--eval-count", "200",
                     "--max-drop", "100", "--no-simplify", "--json")
    assert made.code == 0, made.stderr
    manifest = json.loads(made.stdout)
    assert manifest["inputs"]["checkpoint"]["sha256"] == two.info.sha256
    assert manifest["model"] == "hps-06-0.25x"


class _Plain(nn.Module):
    """No BatchNorm, no dropout: a step on two ranks must equal the step on one, up to float rounding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2)
        self.head = nn.Linear(4 * 15 * 15, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def _plain_steps(rank: int, world_size: int, port: int, root: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from toolchain.training.distributed import ProcessGroup

    torch.set_num_threads(1)
    dataset = load_dataset("fashion-mnist", "train", Path(root)).sample(250, 0)
    torch.manual_seed(0)
    model = _Plain()
    optimizer = build_optimizer("sgd", model.parameters())
    batches = iterate_batches(dataset, 63, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0))
    if world_size == 1:
        stats = fit_batches(model, optimizer, batches, total=4)
    else:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
        group = ProcessGroup(rank, world_size, rank, world_size, "gloo", "cpu")
        shards = iterate_shards(dataset, 63, rank, world_size, shuffle=True, augment=True,
                                generator=torch.Generator().manual_seed(0))
        stats = fit_batches(DistributedDataParallel(model), optimizer, shards, total=4, group=group)
        dist.destroy_process_group()
    if rank == 0:
        torch.save({"state": model.state_dict(), "loss": stats.loss, "images": stats.images}, out)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_step_on_two_ranks_is_the_one_process_step(tmp_path, fashion_mnist_root, monkeypatch):
    # 250 images in batches of 63: the last batch (61) splits 31 + 30, so unequal shards are weighed right
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    _plain_steps(0, 1, 0, str(fashion_mnist_root), str(tmp_path / "one.pt"))
    torch.multiprocessing.spawn(_plain_steps, args=(2, _free_port(), str(fashion_mnist_root),
                                                    str(tmp_path / "two.pt")), nprocs=2)
    one, two = (torch.load(tmp_path / name, weights_only=True) for name in ("one.pt", "two.pt"))
    assert one["images"] == two["images"] == 250
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)
    for key, tensor in one["state"].items():
        torch.testing.assert_close(two["state"][key], tensor, atol=1e-5, rtol=1e-4)


def test_shards_are_disjoint_slices_of_the_one_process_batches(fashion_mnist_root):
    dataset = load_dataset("fashion-mnist", "test", fashion_mnist_root).sample(203, 0)
    whole = list(iterate_batches(dataset, 50, shuffle=True, augment=True, generator=torch.Generator().manual_seed(3)))
    parts = [list(iterate_shards(dataset, 50, rank, 3, shuffle=True, augment=True,
                                 generator=torch.Generator().manual_seed(3))) for rank in range(3)]
    for index, (images, labels) in enumerate(whole):
        shards = [part[index] for part in parts]
        assert [shard[2] for shard in shards] == [len(labels)] * 3
        assert max(len(s[1]) for s in shards) - min(len(s[1]) for s in shards) <= 1
        torch.testing.assert_close(torch.cat([s[0] for s in shards]), images, atol=0, rtol=0)
        assert torch.equal(torch.cat([s[1] for s in shards]), labels)


def test_interrupted_run_resumes_on_two_processes_exactly(tmp_path, fashion_mnist_root, toolchain):  # noqa: F811
    config = TrainConfig(data_dir=fashion_mnist_root, **SMALL)
    straight = train_processes(replace(config, run_dir=tmp_path / "straight"), 2)

    def ctrl_c_after_epoch_1(event: TrainProgress) -> None:
        if event.phase == "epoch":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_processes(replace(config, run_dir=tmp_path / "run"), 2, ctrl_c_after_epoch_1)
    assert multiprocessing.active_children() == []  # every worker stopped
    assert not list((tmp_path / "run").glob(".*.tmp"))
    assert read_info(tmp_path / "run" / "checkpoint.pt").epoch == 1

    resumed = toolchain("train", "--resume", tmp_path / "run", "--nproc", "2", "--json")
    assert resumed.code == 0, resumed.stderr
    assert "resuming after epoch 1" in resumed.stderr and "2 processes (gloo, cpu)" in resumed.stderr
    assert "per process" in resumed.stderr
    history = json.loads(resumed.stdout)["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    for field in ("train_loss", "train_acc", "test_loss", "test_top1"):
        assert history[1][field] == getattr(straight.history[1], field), field


def test_a_killed_worker_stops_the_run_with_one_error_naming_its_rank(tmp_path, fashion_mnist_root):
    def kill_rank_1(event: TrainProgress) -> None:
        if event.phase == "train" and event.batch == 2:
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGKILL)

    config = TrainConfig(data_dir=fashion_mnist_root, run_dir=tmp_path / "run", **SMALL)
    with pytest.raises(TrainingError) as raised:
        train_processes(config, 2, kill_rank_1)
    assert_clear_error(raised.value, "rank 1 of 2 stopped (killed by SIGKILL)")
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == []  # nothing half-written
    assert multiprocessing.active_children() == []


def test_a_batch_too_small_to_share_is_refused_before_training(tmp_path, fashion_mnist_root):
    config = TrainConfig(data_dir=fashion_mnist_root, run_dir=tmp_path / "run",
                         **{**SMALL, "train_limit": 321})  # the last batch holds one image
    with pytest.raises(UsageError) as raised:
        train_processes(config, 2)
    assert_clear_error(raised.value, "a batch of 1 image(s) cannot be shared by 2 processes")
    assert multiprocessing.active_children() == []


def test_device_selection():
    assert select_device("auto", cuda_available=False, cuda_devices=0) == ("gloo", "cpu")
    assert select_device("cpu", cuda_available=True, cuda_devices=2) == ("gloo", "cpu")
    assert select_device("auto", True, 2, local_rank=1, local_world_size=2) == ("nccl", "cuda:1")
    assert select_device("cuda", True, 1) == ("nccl", "cuda:0")
    for args, fragment in ((("cuda", False, 0), "torch sees no CUDA device"),
                           (("auto", True, 2, 0, 4), "4 processes on this machine need one GPU each"),
                           (("gpu", True, 1), "--device must be one of auto, cpu, cuda")):
        with pytest.raises(UsageError) as raised:
            select_device(*args)
        assert_clear_error(raised.value, fragment)


def test_threads_are_shared_between_the_processes_of_a_machine():
    assert [threads_per_process(16, n) for n in (1, 2, 3, 32)] == [16, 8, 5, 1]


def test_torchrun_environment_is_read_and_checked():
    assert launch_environment({}) is None
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "10.234.224.16", "MASTER_PORT": "29500"}
    launch = launch_environment(env)
    assert (launch.rank, launch.world_size, launch.local_rank, launch.local_world_size, launch.master_port) == (
        3, 8, 1, 2, 29500)
    for broken, fragment in (({**env, "MASTER_PORT": ""}, "MASTER_PORT not set"),
                             ({**env, "RANK": "x"}, "RANK='x'"), ({**env, "RANK": "8"}, "outside WORLD_SIZE=8")):
        with pytest.raises(UsageError) as raised:
            launch_environment(broken)
        assert_clear_error(raised.value, fragment)


def test_nproc_under_torchrun_is_a_usage_error(toolchain, monkeypatch, tmp_path):  # noqa: F811
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    outcome = toolchain("train", "-m", "hps-06-0.25x", "--nproc", "2", "--artifacts", tmp_path)
    assert outcome.code == 2 and "--nproc cannot be used under torchrun" in outcome.stderr
