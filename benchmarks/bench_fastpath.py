"""The README's main command on its fast path: a re-run of `toolchain export --model hps-06-0.5x` with nothing to do.

Goal (issue: pipeline of passes): with or without --checkpoint, such a re-run imports neither torch nor onnx
and finishes in <= 1 s on this machine. Measured as whole commands (a fresh interpreter each, as a user runs
them), interleaved rounds: `toolchain --version` (the floor: interpreter + typer), the re-run by model name,
and the re-run with --checkpoint; wall seconds and child CPU seconds, medians, ratios to --version. The
artifact is made first in a private store (trained briefly, as `toolchain export` does when no checkpoint
exists). Results: benchmarks/results/fastpath.json (a missed goal is recorded, not an exit failure).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine_info import machine_summary  # noqa: E402
from toolchain.fsutil import atomic_write_json  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "fastpath.json"
MODEL = "hps-06-0.5x"
ROUNDS = 7
GOAL_S = 1.0
TOOL = [sys.executable, "-c", "from toolchain.cli.main import run; run()"]


def timed(argv: list[str]) -> tuple[float, float, str]:
    """(wall seconds, child CPU seconds, stdout) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def imports_of(arguments: list[str]) -> dict[str, bool]:
    """Whether the same re-run, in-process, imported torch or onnx (and that it was cached)."""
    probe = ("import sys; from toolchain.cli.main import app; "
             f"app(args={arguments!r}, prog_name='toolchain', standalone_mode=False); "
             "print('torch' in sys.modules, 'onnx' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    torch_loaded, onnx_loaded = done.stderr.strip().splitlines()[-1].split()
    return {"torch": torch_loaded == "True", "onnx": onnx_loaded == "True", "cached": "cached:" in done.stderr}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-fastpath-") as scratch:
        store = Path(scratch) / "artifacts"
        made = subprocess.run([*TOOL, "export", "--model", MODEL, "--artifacts", str(store), "--json"],
                              capture_output=True, text=True, cwd=REPO)
        if made.returncode != 0:
            print(made.stderr, file=sys.stderr)
            return 1
        checkpoint = json.loads(made.stdout)["inputs"]["checkpoint"]["file"]
        variants = {"version": [*TOOL, "--version"],
                    "export --model": [*TOOL, "export", "--model", MODEL, "--artifacts", str(store)],
                    "export --model --checkpoint": [*TOOL, "export", "--model", MODEL, "--artifacts", str(store),
                                                    "--checkpoint", checkpoint]}
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for _ in range(ROUNDS):
            for name, argv in variants.items():
                wall, cpu, _ = timed(argv)
                samples[name].append((wall, cpu))
        imports = {name: imports_of(argv[len(TOOL):]) for name, argv in variants.items() if name != "version"}
    figures = {name: {"wall_s_median": statistics.median(w for w, _ in values),
                      "cpu_s_median": statistics.median(c for _, c in values),
                      "wall_s": [round(w, 4) for w, _ in values]} for name, values in samples.items()}
    floor = figures["version"]["wall_s_median"]
    for name in variants:
        figures[name]["wall_over_version"] = figures[name]["wall_s_median"] / floor
    passed = all(figures[name]["wall_s_median"] <= GOAL_S and not imports[name]["torch"] and not imports[name]["onnx"]
                 and imports[name]["cached"] for name in imports)
    document = {"benchmark": "fastpath", "goal": f"cached re-run <= {GOAL_S:g} s, no torch/onnx import",
                "pass": passed, "model": MODEL, "rounds": ROUNDS, "figures": figures, "imports": imports,
                "machine": machine_summary(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_json(RESULT, document)
    for name, values in figures.items():
        print(f"{name}: {values['wall_s_median']:.3f} s wall, {values['cpu_s_median']:.3f} s CPU "
              f"({values['wall_over_version']:.2f}x --version)", file=sys.stderr)
    print(f"imports: {imports}; goal {'met' if passed else 'MISSED'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
