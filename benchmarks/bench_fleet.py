"""Fleet speed-up: `fleet bench` wall time vs the sum of the hosts' own times, over real OpenSSH servers on 127.0.0.1.

Four sshd (tests/fixtures/fleet.py: one behind a throttled link, the "slow" host; no host fails here: the
flaky host's agent-killing wrapper is switched off by its marker) each get the artifact deployed first, then
`run_fleet("bench")` runs with --forks 1 and --forks 4. Figures, written under the "fleet" key of
benchmarks/results/scale.json with the machine they were measured on (other keys of that file, such as
"ddp", are kept: read-modify-write under an exclusive lock, replaced atomically):

- wall_s per forks value, hosts_s (the sum of per-host times of that run), speedup = hosts_s / wall_s, and
  speedup_vs_forks_1 = the --forks 1 run's wall time / this run's.
  On this machine every "host" is the same 2-core CPU, so the hosts' benches compete for it: the speed-up
  measures the overlap of SSH round trips, uploads and agent start-ups, not of independent boards.

Usage: python benchmarks/bench_fleet.py [--artifact FOLDER] (default: the newest hps-06-0.5x in artifacts/)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_train import machine  # noqa: E402  (same machine record as the other benchmarks)
from shared_results import update_results  # noqa: E402  (benchmarks/shared_results.py: scale.json is shared with bench_ddp)
from tests.fixtures.fleet import loopback_fleet  # noqa: E402
from toolchain.artifacts import ArtifactStore, load_artifact  # noqa: E402
from toolchain.fleet.inventory import read_inventory  # noqa: E402
from toolchain.fleet.run import run_fleet  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "scale.json"
MODEL = "hps-06-0.5x"
BENCH = {"threads": (1,), "warmup": 5, "runs": 50, "min_time_s": 1.0}



def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, help="artifact folder to bench (default: newest hps-06-0.5x)")
    source = parser.parse_args(argv).artifact or ArtifactStore(REPO / "artifacts").latest(MODEL)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as scratch:
        folder = Path(scratch)
        copy = folder / "store" / source.parent.name / source.name
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("bench"))
        artifact = load_artifact(copy)
        with loopback_fleet(folder / "fleet") as fleet:
            fleet.kill_marker.touch()  # no failing host in a speed measurement
            hosts = read_inventory(fleet.inventory)
            deployed = run_fleet("deploy", hosts, artifact, forks=len(hosts))
            assert not deployed.failed, [item.error for item in deployed.failed]
            for forks in (1, len(hosts)):
                run = run_fleet("bench", hosts, artifact, forks=forks, bench_overrides=BENCH)
                assert not run.failed, [item.error for item in run.failed]
                hosts_s = sum(item.seconds for item in run.results)
                runs.append({"forks": forks, "hosts": len(hosts), "wall_s": round(run.wall_s, 3),
                             "hosts_s": round(hosts_s, 3), "speedup": round(hosts_s / run.wall_s, 3),
                             "per_host_s": {item.host: round(item.seconds, 3) for item in run.results}})
                print(f"forks {forks}: wall {run.wall_s:.1f} s, hosts {hosts_s:.1f} s, x{hosts_s / run.wall_s:.2f}")
    serial = runs[0]["wall_s"]
    for entry in runs:
        entry["speedup_vs_forks_1"] = round(serial / entry["wall_s"], 3)
    update_results(RESULT, "fleet", {
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
        "model": artifact.model, "artifact_id": artifact.artifact_id, "bench": {**BENCH, "threads": [1]},
        "what": "toolchain fleet bench over 4 OpenSSH servers on 127.0.0.1 (one throttled); every host is this "
                "machine's CPU, so benches compete for it",
        "runs": runs})
    print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
