"""Training on several processes with torch.distributed: DistributedDataParallel, gloo on CPU, NCCL on CUDA.

Two ways in (docs/distributed.md):

- ``toolchain train --nproc N``: this process is rank 0 and starts N-1 workers on this machine (spawn); they
  meet at a TCPStore rank 0 opens on 127.0.0.1 at a port the kernel picks.
- under ``torchrun`` (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment), on one or many hosts:
  each process joins the group torchrun set up.

What a run means is the same as on one process: ``--batch-size`` is the global batch, every rank draws the
same global batches (same shuffle, same augmentation draws) and trains on a disjoint slice of each, the loss
of a slice is its share of the global batch mean, so DDP's averaged gradient is the one-process gradient.
BatchNorm is per process (plain DDP): torch refuses SyncBatchNorm on CPU tensors, and one semantics on both
devices keeps CPU and GPU runs comparable. Rank 0 alone evaluates and writes the run folder.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from toolchain.errors import ToolchainError, TrainingError, UsageError

if TYPE_CHECKING:
    from toolchain.training.loop import TrainConfig, TrainProgress, TrainResult

DEVICES = ("auto", "cpu", "cuda")
# gloo's own default: long enough for rank 0's evaluation and saving, which the other ranks wait through.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
# How long rank 0 waits for a failed worker's report before naming it by its exit status alone.
FAILURE_REPORT_WAIT_S = 10.0
_JOINED_KEY = "toolchain/joined"
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in a training group: its rank, how many there are, its backend and device."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    backend: str
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over every rank (returned on the CPU)."""
        import torch.distributed as dist

        on_device = tensor.to(self.device)
        dist.all_reduce(on_device)
        return on_device.cpu()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=torch.device(self.device))
        return box[0]


@dataclass(frozen=True)
class LaunchEnvironment:
    """What torchrun (or any launcher following its convention) put into a process's environment."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int


def select_device(requested: str, cuda_available: bool, cuda_devices: int, local_rank: int = 0,
                  local_world_size: int = 1) -> tuple[str, str]:
    """(backend, device) for one process: NCCL on its own GPU where CUDA is there, else gloo on the CPU.

    ``requested``: "auto" (CUDA when torch sees a device), "cpu" or "cuda". NCCL takes one GPU per process,
    so a machine runs at most as many processes as it has GPUs.
    """
    if requested not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {requested!r}",
                         "pass --device auto (CUDA when there is a GPU), cpu or cuda")
    if requested == "cpu" or (requested == "auto" and not cuda_available):
        return "gloo", "cpu"
    if not cuda_available or cuda_devices < 1:
        raise UsageError("--device cuda: torch sees no CUDA device on this machine",
                         "pass --device cpu (or auto), or install a CUDA build of torch on a GPU machine")
    if local_world_size > cuda_devices:
        raise UsageError(f"{local_world_size} processes on this machine need one GPU each; torch sees "
                         f"{cuda_devices}", f"pass --nproc {cuda_devices} (or --device cpu)")
    return "nccl", f"cuda:{local_rank}"


def threads_per_process(cores: int, local_world_size: int) -> int:
    """Intra-op threads for each of ``local_world_size`` processes sharing ``cores`` (at least one)."""
    return max(1, cores // max(1, local_world_size))


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container or taskset limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def launch_environment(environ: Mapping[str, str] | None = None) -> LaunchEnvironment | None:
    """The torchrun settings of this process, or None when it was not started by a launcher."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ and "WORLD_SIZE" not in environ:
        return None
    missing = [name for name in _TORCHRUN_VARIABLES if not environ.get(name)]
    if missing:
        raise UsageError(f"a distributed launch needs {', '.join(_TORCHRUN_VARIABLES)} in the environment; "
                         f"{', '.join(missing)} not set",
                         "start it with torchrun (docs/distributed.md), or unset RANK and WORLD_SIZE")
    values: dict[str, int] = {}
    for name, default in (("RANK", None), ("WORLD_SIZE", None), ("LOCAL_RANK", "RANK"),
                          ("LOCAL_WORLD_SIZE", "WORLD_SIZE"), ("MASTER_PORT", None)):
        text = environ.get(name) or environ[default]
        try:
            values[name] = int(text)
        except ValueError:
            raise UsageError(f"{name}={text!r} in the environment is not a whole number",
                             "start it with torchrun (docs/distributed.md)") from None
    if not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise UsageError(f"RANK={values['RANK']} is outside WORLD_SIZE={values['WORLD_SIZE']}",
                         "start it with torchrun (docs/distributed.md)")
    return LaunchEnvironment(rank=values["RANK"], world_size=values["WORLD_SIZE"],
                             local_rank=values["LOCAL_RANK"], local_world_size=values["LOCAL_WORLD_SIZE"],
                             master_addr=environ["MASTER_ADDR"], master_port=values["MASTER_PORT"])


def _init_group(rank: int, world_size: int, local_rank: int, local_world_size: int, device: str,
                store: Any = None) -> ProcessGroup:
    import torch.distributed as dist

    backend, device = select_device(device, torch.cuda.is_available(), torch.cuda.device_count(), local_rank,
                                    local_world_size)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    try:
        if store is None:
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                                    timeout=COLLECTIVE_TIMEOUT)
        else:
            dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                    timeout=COLLECTIVE_TIMEOUT)
    except (RuntimeError, ValueError, OSError) as exc:
        raise TrainingError(f"rank {rank} cannot join the training group ({backend}): {_first_line(exc)}",
                            "check MASTER_ADDR/MASTER_PORT reach rank 0 and every host runs the same "
                            "command (docs/distributed.md)") from None
    return ProcessGroup(rank=rank, world_size=world_size, local_rank=local_rank,
                        local_world_size=local_world_size, backend=backend, device=device)


def _leave_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def train_in_launched_group(config: "TrainConfig", launch: LaunchEnvironment,
                            on_progress: Callable[["TrainProgress"], None] | None = None
                            ) -> "TrainResult | None":
    """Join the group a launcher (torchrun) set up and train as one of its ranks; rank 0 returns the result."""
    from toolchain.training.loop import train_rank

    config.validate()
    group = _init_group(launch.rank, launch.world_size, launch.local_rank, launch.local_world_size,
                        config.device)
    try:
        return train_rank(config, group, on_progress if group.is_main else None)
    finally:
        _leave_group()


def train_processes(config: "TrainConfig", nproc: int,
                    on_progress: Callable[["TrainProgress"], None] | None = None) -> "TrainResult":
    """Train on ``nproc`` processes of this machine: this one is rank 0, the others are spawned workers.

    A worker that fails or dies stops the run with one error naming its rank; Ctrl-C or an error on rank 0
    stops every worker. Only rank 0 writes, each file atomically, so nothing is left half-written.
    """
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from toolchain.training.loop import train_rank

    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}", "pass --nproc 2 for two processes")
    config.validate()
    # Checked here, before any worker starts: too many processes for the GPUs, an unknown --device.
    select_device(config.device, torch.cuda.is_available(), torch.cuda.device_count(), 0, nproc)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # local workers talk over loopback only
    store = dist.TCPStore("127.0.0.1", 0, nproc, is_master=True, wait_for_workers=False,
                          timeout=COLLECTIVE_TIMEOUT)
    context = mp.get_context("spawn")
    reports = context.Queue()
    workers = [context.Process(target=_worker, name=f"toolchain-train-rank-{rank}", daemon=True,
                               args=(config.to_dict(), rank, nproc, store.port, reports))
               for rank in range(1, nproc)]
    try:
        for worker in workers:
            worker.start()
        _wait_for_workers(store, workers, reports, nproc)
        group = _init_group(0, nproc, 0, nproc, config.device, store)
        try:
            result = train_rank(config, group, on_progress)
        except (KeyboardInterrupt, ToolchainError):
            raise
        except Exception as exc:  # a collective failed: a worker stopped, or the connection to one did
            raise _worker_failure(workers, reports, nproc) or TrainingError(
                f"rank 0 of {nproc} failed: {_first_line(exc)}",
                "rerun; with --debug for the traceback") from None
        _join(workers, reports, nproc)
        return result
    finally:
        _stop(workers)
        _leave_group()


def _worker(config_data: dict[str, Any], rank: int, world_size: int, port: int, reports: Any) -> None:
    """One spawned rank: join rank 0's store, train, report a failure as (rank, message, hint)."""
    import torch.distributed as dist

    from toolchain.training.loop import TrainConfig, train_rank

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches rank 0, which stops every worker
    try:
        config = TrainConfig.from_dict(config_data)
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=COLLECTIVE_TIMEOUT)
        store.add(_JOINED_KEY, 1)
        group = _init_group(rank, world_size, rank, world_size, config.device, store)
        train_rank(config, group, None)
    except ToolchainError as error:
        reports.put((rank, error.message, error.hint))
        raise SystemExit(1)
    except Exception as exc:  # torch/gloo/OS errors of a worker: rank 0 prints them as one line
        reports.put((rank, f"{type(exc).__name__}: {_first_line(exc)}", None))
        raise SystemExit(1)
    finally:
        _leave_group()
    # Done, and rank 0 wrote everything: leave without the interpreter's teardown. Measured in CI, once in
    # several runs: a worker that had finished and left the group still died of SIGABRT at exit ("terminate
    # called without an active exception": a gloo/TCPStore thread destroyed while joinable), and rank 0
    # reported the finished run as failed. Nothing of a worker needs flushing on success (it sends no report).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _wait_for_workers(store: Any, workers: list[Any], reports: Any, nproc: int) -> None:
    # init_process_group would wait the whole timeout for a worker that died while starting: watch them
    while store.add(_JOINED_KEY, 0) < nproc - 1:
        if any(worker.exitcode is not None for worker in workers):
            raise _worker_failure(workers, reports, nproc) or TrainingError(
                "a training worker stopped while starting", "rerun; with --debug for the traceback")
        time.sleep(0.05)


def _worker_failure(workers: list[Any], reports: Any, nproc: int) -> TrainingError | None:
    """The first failed worker as one error naming its rank (its own report, else its exit status)."""
    start = time.monotonic()
    while True:
        try:
            rank, message, hint = reports.get(timeout=0.1)
            return TrainingError(f"rank {rank} of {nproc} failed: {message}",
                                 hint or "rerun; with --debug for the traceback")
        except queue.Empty:
            pass
        dead = [(rank, worker.exitcode) for rank, worker in enumerate(workers, 1)
                if worker.exitcode not in (None, 0)]
        if dead and time.monotonic() - start > 1.0:  # a report sent just before exiting has arrived by now
            rank, code = dead[0]
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            return TrainingError(f"rank {rank} of {nproc} stopped ({how})",
                                 "it was killed from outside (out of memory?); rerun, or resume the run "
                                 "with --resume RUN_DIR")
        if time.monotonic() - start > FAILURE_REPORT_WAIT_S:
            return None


def _join(workers: list[Any], reports: Any, nproc: int) -> None:
    for worker in workers:
        worker.join(timeout=COLLECTIVE_TIMEOUT.total_seconds())
    failure = _worker_failure(workers, reports, nproc) if any(w.exitcode for w in workers) else None
    if failure is not None:
        raise failure


def _stop(workers: list[Any]) -> None:
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        if worker.pid is not None:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
