"""Run every benchmarks/bench_*.py in its own process, in name order; fail if any of them fails.

Each benchmark writes its own benchmarks/results/<name>.json. Usage: `just bench`, or
`python benchmarks/run.py [NAME ...]` to run only bench_NAME.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    """Run the selected benchmarks (all when none are named); the exit status says if all passed."""
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        wanted = {f"bench_{name.removeprefix('bench_').removesuffix('.py')}.py" for name in argv}
        unknown = wanted - {script.name for script in scripts}
        if unknown:
            print(f"error: no benchmark {', '.join(sorted(unknown))} in {HERE}", file=sys.stderr)
            available = ", ".join(script.stem.removeprefix("bench_") for script in scripts)
            print(f"hint: available: {available}", file=sys.stderr)
            return 2
        scripts = [script for script in scripts if script.name in wanted]
    outcomes = []
    for script in scripts:
        print(f"== {script.name}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        returncode = subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode
        outcomes.append((script.name, returncode, time.perf_counter() - start))
    for name, returncode, seconds in outcomes:
        status = "ok" if returncode == 0 else f"FAILED (exit {returncode})"
        print(f"{name}: {status} in {seconds:.0f} s", file=sys.stderr)
    return 0 if all(returncode == 0 for _, returncode, _ in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
