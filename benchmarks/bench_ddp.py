"""Training throughput on 2 processes (DistributedDataParallel, gloo, 127.0.0.1) vs 1, on this machine's CPU.

Written under the "ddp" key of benchmarks/results/scale.json (other keys, e.g. "fleet", are kept: the file is
read, changed and replaced atomically under an exclusive lock). Same model, data, global batch and threads in
all: the one-process run gets every core (and once more a single thread), each of the two processes half
of them (`threads_per_process`).
Figures: training images/s of each run (all processes together), each process's own images/s, the speed-up
(2-process images/s over 1-process images/s) and the seconds of one epoch of each (training + rank 0's
evaluation). No GPU on the machine this was written on: the CUDA/NCCL path is not measured here.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from machine_info import machine_summary  # benchmarks/machine_info.py (the script's folder)
from shared_results import update_results  # benchmarks/shared_results.py
from toolchain.training.distributed import available_cores, train_processes
from toolchain.training.loop import TrainConfig, train_model

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "scale.json"
MODEL = "hps-06-0.5x"
SETTINGS = dict(model=MODEL, epochs=1, batch_size=128, train_limit=8192, eval_limit=1000)



def run(nproc: int, threads: int | None = None) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        config = TrainConfig(run_dir=Path(folder) / "run", **SETTINGS)
        if nproc == 1:
            result = train_model(replace(config, threads=threads))
        else:
            result = train_processes(config, nproc)
    metrics = result.history[0]
    return {"processes": nproc, "threads_per_process": result.info.training["threads"],
            "images_per_s": round(metrics.images_per_s, 1),
            "process_images_per_s": [round(rate, 1) for rate in metrics.process_images_per_s or
                                     [metrics.images_per_s]],
            "epoch_seconds": round(metrics.seconds, 2), "train_loss": round(metrics.train_loss, 4)}




def main() -> int:
    print(f"bench_ddp: {MODEL}, {SETTINGS['train_limit']} images, 1 process then 2 (gloo)", file=sys.stderr,
          flush=True)
    one = run(1, available_cores())
    # a shared machine's other load stalls a process whose intra-op threads wait for each other: the
    # one-thread process shows how much of the speed-up is that rather than the second process
    one_thread = run(1, 1)
    two = run(2)
    update_results(RESULT, "ddp", {
        "benchmark": "ddp", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_summary(), "torch": torch.__version__, "platform": platform.platform(),
                    "affinity_cores": available_cores(), "gpu": torch.cuda.is_available()},
        "settings": SETTINGS, "backend": "gloo", "device": "cpu", "one_process": one,
        "one_process_one_thread": one_thread, "two_processes": two,
        "speedup": round(two["images_per_s"] / one["images_per_s"], 3),
        "speedup_over_best_one_process": round(two["images_per_s"] / max(one["images_per_s"],
                                                                         one_thread["images_per_s"]), 3)})
    print(f"bench_ddp: 1 process {one['images_per_s']} img/s ({one_thread['images_per_s']} on 1 thread), 2 processes {two['images_per_s']} img/s "
          f"({' + '.join(map(str, two['process_images_per_s']))}); {RESULT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
