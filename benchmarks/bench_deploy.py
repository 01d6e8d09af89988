"""Deploy cost over a real OpenSSH server on 127.0.0.1: bytes and seconds, first deploy vs unchanged redeploy.

Figures (written to benchmarks/results/deploy.json with the machine they were measured on):

- first_deploy_bytes / first_deploy_seconds: deploy of an hps-06-0.5x artifact made by the host
  pipeline (`run_export` with its defaults except a 256-image eval set: FP32 + INT8 + eval set +
  manifest, plus the agent) into an empty work folder: preflight, lock, runtime check (the target's
  onnxruntime is the venv's), opset probe, verified upload. Median of ROUNDS.
- redeploy_bytes / redeploy_seconds: the same deploy again, nothing changed. Goal: 0 bytes.

The checkpoint: `--checkpoint PATH`, else the newest trained hps-06-0.5x under artifacts/train, else
the pipeline trains one briefly (about a minute). The target is this machine, reached through sshd on
127.0.0.1: the seconds are the tool's own overhead (SSH round trips, Python start-ups on the target,
hashing), not a network's.

Usage: python benchmarks/bench_deploy.py [--checkpoint PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_train import machine  # noqa: E402  (same machine record as the other benchmarks)
from tests.fixtures.sshd import running_sshd  # noqa: E402
from toolchain.training.checkpoints import find_latest_checkpoint  # noqa: E402
from toolchain.fsutil import atomic_write_json  # noqa: E402
from toolchain.pipeline import DEFAULT_DATASET, ExportRequest, run_export  # noqa: E402
from toolchain.remote.deploy import deploy  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "deploy.json"
MODEL = "hps-06-0.5x"
EVAL_IMAGES = 256
ROUNDS = 3
GOALS = {"redeploy_bytes": ("<=", 0.0), "first_deploy_seconds": ("<=", 10.0), "redeploy_seconds": ("<=", 5.0)}


def figure(name: str, value: float, unit: str) -> dict:
    entry = {"name": name, "value": round(value, 4), "unit": unit}
    if name in GOALS:
        comparison, goal = GOALS[name]
        entry.update(goal=f"{comparison} {goal:g}", **{"pass": value <= goal})
    return entry


def main(argv: list[str]) -> int:
    """Measure, write benchmarks/results/deploy.json, exit 1 if a figure misses its goal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help=f"a trained {MODEL} checkpoint")
    checkpoint = parser.parse_args(argv).checkpoint or find_latest_checkpoint(REPO / "artifacts", MODEL,
                                                                              DEFAULT_DATASET)
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as scratch:
        folder = Path(scratch)
        made = run_export(ExportRequest(model=MODEL, checkpoint=checkpoint, artifacts=folder / "artifacts",
                                        eval_count=EVAL_IMAGES),
                          on_message=lambda message: print(f"bench_deploy: {message}", file=sys.stderr))
        artifact = made.folder
        (folder / "sshd").mkdir()
        first: list[tuple[int, float]] = []
        again: list[tuple[int, float]] = []
        with running_sshd(folder / "sshd") as server:
            for round_index in range(ROUNDS):
                (folder / f"round{round_index}").mkdir()
                profile = server.profile(folder / f"round{round_index}")
                for runs in (first, again):
                    started = time.perf_counter()
                    report = deploy(profile, artifact)
                    runs.append((report.bytes_sent, time.perf_counter() - started))
    figures = [figure("first_deploy_bytes", statistics.median(b for b, _ in first), "B"),
               figure("first_deploy_seconds", statistics.median(s for _, s in first), "s"),
               figure("redeploy_bytes", max(b for b, _ in again), "B"),
               figure("redeploy_seconds", statistics.median(s for _, s in again), "s")]
    manifest = made.manifest
    atomic_write_json(RESULT, {
        "benchmark": "deploy", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "model": MODEL, "eval_images": EVAL_IMAGES, "transport": "ssh to 127.0.0.1",
        "artifact": {"artifact_id": manifest["artifact_id"], "opset": manifest["opset"],
                     "checkpoint_sha256": manifest["inputs"]["checkpoint"]["sha256"],
                     "files": {name: record["bytes"] for name, record in manifest["files"].items()}},
        "rounds": ROUNDS, "figures": figures,
        "runs": {"first": [{"bytes": b, "seconds": round(s, 4)} for b, s in first],
                 "redeploy": [{"bytes": b, "seconds": round(s, 4)} for b, s in again]}})
    for item in figures:
        goal = f" (goal {item['goal']}): {'pass' if item['pass'] else 'FAIL'}" if "goal" in item else ""
        print(f"bench_deploy: {item['name']} = {item['value']:g} {item['unit']}{goal}", file=sys.stderr)
    print(f"bench_deploy: wrote {RESULT}", file=sys.stderr)
    return 0 if all(item.get("pass", True) for item in figures) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
