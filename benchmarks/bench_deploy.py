"""Deploy cost over a real OpenSSH server on 127.0.0.1: bytes and seconds, first deploy vs unchanged redeploy.

Figures (written to benchmarks/results/deploy.json with the machine they were measured on):

- first_deploy_bytes / first_deploy_seconds: deploy of an hps-06-0.5x artifact (FP32 + INT8 + a
  256-image Fashion-MNIST eval set + agent) into an empty work folder: preflight, lock, runtime
  check (the target's onnxruntime is the venv's), opset probe, verified upload. Median of ROUNDS.
- redeploy_bytes / redeploy_seconds: the same deploy again, nothing changed. Goal: 0 bytes.

The target is this machine, reached through sshd on 127.0.0.1: the seconds are the tool's own
overhead (SSH round trips, Python start-ups on the target, hashing), not a network's.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_train import machine  # noqa: E402  (same machine record as the other benchmarks)
from tests.fixtures.deploy import build_artifact  # noqa: E402
from tests.fixtures.sshd import running_sshd  # noqa: E402
from toolchain.fsutil import atomic_write_json  # noqa: E402
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


def main() -> int:
    """Measure, write benchmarks/results/deploy.json, exit 1 if a figure misses its goal."""
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as scratch:
        folder = Path(scratch)
        artifact = build_artifact(folder / "artifacts", 17, model_name=MODEL, eval_images=EVAL_IMAGES)
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
    atomic_write_json(RESULT, {
        "benchmark": "deploy", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "model": MODEL, "eval_images": EVAL_IMAGES, "transport": "ssh to 127.0.0.1",
        "rounds": ROUNDS, "figures": figures,
        "runs": {"first": [{"bytes": b, "seconds": round(s, 4)} for b, s in first],
                 "redeploy": [{"bytes": b, "seconds": round(s, 4)} for b, s in again]}})
    for item in figures:
        goal = f" (goal {item['goal']}): {'pass' if item['pass'] else 'FAIL'}" if "goal" in item else ""
        print(f"bench_deploy: {item['name']} = {item['value']:g} {item['unit']}{goal}", file=sys.stderr)
    print(f"bench_deploy: wrote {RESULT}", file=sys.stderr)
    return 0 if all(item.get("pass", True) for item in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
