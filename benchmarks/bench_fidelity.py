"""Every model of the papers' Table 4 and Table 7 (plus sqnxt-23-1x-v1) through `toolchain export` with defaults.

Issue "every paper model ships in INT8 within the gate": each model is exported as a new user would,
``toolchain export --model NAME`` with no tolerance or gate override. Without a checkpoint the command
trains one briefly (`toolchain.pipeline.quick_train_budget`: 2 epochs on 10,000 Fashion-MNIST images, at lr 0.05,
or 0.01 for a deep HPS), so the
checkpoints are the short, ill-conditioned ones the deep HPS nets come out of. The trained checkpoints
and artifacts are kept in ``$TOOLCHAIN_CACHE/fidelity-store`` so that a rerun measures the export again
without retraining (``--fresh`` retrains: the named models, or all). Per model: FP32 and INT8 top-1 on the eval set, the drop, what
the gate did (calibration attempts, the method shipped, nodes kept in float, BatchNorms folded/rescaled),
and seconds (training and export apart). A model that fails is recorded with its error line; the exit
status is non-zero only when the benchmark itself breaks. Results: benchmarks/results/fidelity.json.

Usage: python benchmarks/bench_fidelity.py [--fresh] [MODEL ...]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine_info import machine_summary  # noqa: E402
from toolchain.fsutil import atomic_write_json, cache_root  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "fidelity.json"
# Table 4 (the Bluebox deployment table) and Table 7, then the SqueezeNext baseline
MODELS = ("hps-21-1x-v3", "hps-06-1x", "hps-06-0.5x", "shallow-14-1.5x", "shallow-06-0.575x", "shallow-09-0.5x",
          "modified-sqnxt-23-1x", "squeezed-cnn", "sqnxt-23-1x-v1")
TOOL = [sys.executable, "-c", "from toolchain.cli.main import run; run()"]
CHANCE_PCT = 10.0  # Fashion-MNIST's 10 classes


def export(model: str, store: Path) -> dict[str, Any]:
    """One `toolchain export --model MODEL --json` (training first if the store has no checkpoint)."""
    started = time.perf_counter()
    done = subprocess.run([*TOOL, "export", "--model", model, "--artifacts", str(store), "--json"],
                          capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith(("error:", "hint:"))]
        return {"model": model, "ok": False, "seconds": round(seconds, 1), "error": lines or done.stderr[-600:]}
    manifest = json.loads(done.stdout)
    return {"model": model, "ok": True, "seconds": round(seconds, 1), **summary(manifest, done.stderr)}


def summary(manifest: dict[str, Any], stderr: str) -> dict[str, Any]:
    """The row of the fidelity table for one artifact."""
    accuracy, quantization, nodes = manifest["accuracy"], manifest["quantization"], manifest.get("nodes", {})
    trained = (manifest["inputs"]["checkpoint"].get("trained") or {})
    return {
        "fp32_top1": accuracy["fp32"]["top1"], "int8_top1": accuracy["int8"]["top1"],
        "drop_pp": accuracy["drop_pp"], "max_drop_pp": accuracy["max_drop_pp"], "eval_images": accuracy["fp32"]["count"],
        "method": quantization.get("method"),
        **({"percentile": quantization["percentile"]} if "percentile" in quantization else {}),
        "equalized": "equalization" in quantization,
        "calibration_search": [{key: attempt[key] for key in ("method", "percentile", "equalized", "drop_pp", "passed")
                                if key in attempt}
                               for attempt in quantization.get("calibration_search", [])],
        "kept_float": len(manifest.get("kept_float", [])), "quantizable_nodes": quantization.get("quantizable_nodes"),
        "batchnorm": {key: nodes.get(key) for key in ("batchnorm_folded", "batchnorm_rescaled", "dead_channels")},
        "parity": {key: value for key, value in manifest.get("parity", {}).items() if key.endswith("_max_abs")},
        "trained": {"epochs": trained.get("epoch"), "test_top1": (trained.get("metrics") or {}).get("test_top1")},
        "trained_here": "training" in stderr and "trained:" in stderr,
        "int8_over_fp32_bytes": round(manifest["sizes"]["int8_over_fp32"], 3) if "sizes" in manifest else None,
        "artifact": manifest["artifact_id"],
    }


def main(argv: list[str]) -> int:
    fresh = "--fresh" in argv
    named = [name for name in argv if not name.startswith("--")]
    models = named or list(MODELS)
    store = cache_root() / "fidelity-store"
    if fresh and not named:
        shutil.rmtree(store, ignore_errors=True)
    elif fresh:  # only these models' checkpoints, artifacts and fine-tunes
        for model in models:
            for folder in (store / "train" / model, store / model, store / "qat" / model):
                shutil.rmtree(folder, ignore_errors=True)
    rows = []
    for model in models:
        print(f"== {model}", file=sys.stderr, flush=True)
        row = export(model, store)
        rows.append(row)
        shown = (f"FP32 {row['fp32_top1']:.2f}% INT8 {row['int8_top1']:.2f}% drop {row['drop_pp']:+.2f} pp, "
                 f"{row['method']}, {row['kept_float']} kept in float" if row["ok"] else " ".join(row["error"]))
        print(f"   {shown} ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)
    previous = json.loads(RESULT.read_text()) if RESULT.exists() and len(models) < len(MODELS) else {}
    merged = {row["model"]: row for row in previous.get("rows", [])}
    merged.update({row["model"]: row for row in rows})
    ordered = [merged[name] for name in MODELS if name in merged] + \
        [row for name, row in merged.items() if name not in MODELS]
    atomic_write_json(RESULT, document(ordered))
    return 0


def document(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The results file: the rows, whether every model passed, and which rows do not count as a pass."""
    for row in rows:
        # a checkpoint near chance (10 classes) makes "INT8 within 1 pp of FP32" vacuous
        row["fp32_near_chance"] = bool(row["ok"] and row["fp32_top1"] < CHANCE_PCT + 10.0)
    missing = [name for name in MODELS if name not in {row["model"] for row in rows}]
    failed = [row["model"] for row in rows if not row["ok"] or row["drop_pp"] > row["max_drop_pp"]
              or row["fp32_near_chance"]]
    return {"benchmark": "fidelity", "goal": "every model exports within the default gate (drop <= 1 pp) from a "
            "checkpoint better than chance", "pass": not missing and not failed, "missing": missing,
            "not_passed": failed, "rows": rows, "machine": machine_summary(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
