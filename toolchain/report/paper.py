"""`toolchain report --paper`: the papers' Tables 2-5 and 7 (the registry's figures) with our measured columns.

Per row of a paper table: the newest artifact of that model in the store (any dataset: ours says which),
its FP32/INT8 top-1 on its eval set, paper-style size (the exported checkpoint's torch.save(state_dict)
bytes), ONNX sizes, seconds per training epoch from the checkpoint's run log (CPU, our image count), and
the INT8 p50 at the fewest threads per target. A model we have no artifact of is "—" throughout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolchain.report.collect import Filters, artifact_folders, artifact_entry

PAPER_SCHEMA = "toolchain.report-paper/1"
NOTES = ["paper columns: the registry's copy of the papers' tables (toolchain/models/data/*.csv); the papers' "
         "accuracy is on CIFAR-10/100 and their s/epoch is GPU training time",
         "our columns: the newest artifact of the model in the store, on its own dataset (named per row); our "
         "s/epoch is the mean epoch time of the checkpoint's training log, on this CPU and our training images",
         "size: torch.save(state_dict) bytes, as the papers measure size; ONNX: the exported files",
         "latency: INT8 p50 at the fewest threads measured, per target (emulated ones are marked)",
         "— : no artifact or no such figure"]


def _ours(entry: dict[str, Any]) -> dict[str, Any]:
    fewest: dict[str, dict[str, Any]] = {}
    for row in entry["measurements"]:
        if row["variant"] == "int8" and row["source"] == "bench":
            if row["target"] not in fewest or row["threads"] < fewest[row["target"]]["threads"]:
                fewest[row["target"]] = row
    seconds = [row["seconds"] for row in entry["training"]["epochs"] if "seconds" in row]
    return {"artifact_id": entry["artifact_id"], "dataset": entry["dataset"],
            "fp32_top1": entry["accuracy"]["fp32_top1"], "int8_top1": entry["accuracy"]["int8_top1"],
            **entry["sizes"], "s_per_epoch": sum(seconds) / len(seconds) if seconds else None,
            "int8_p50": [{"target": target, "p50_ms": row["p50_ms"], "threads": row["threads"],
                          "emulated": bool(row["emulated"])} for target, row in sorted(fewest.items())]}


def paper_document(root: Path, filters: Filters = Filters()) -> dict[str, Any]:
    """Each paper table's rows, with ours beside them."""
    from toolchain.models.registry import reported_results

    newest: dict[str, dict[str, Any]] = {}
    for folder in artifact_folders(root):
        entry = artifact_entry(folder, filters)
        if entry and (entry["model"] not in newest or entry["created"] > newest[entry["model"]]["created"]):
            newest[entry["model"]] = entry
    tables: dict[str, dict[str, Any]] = {}
    for model, results in reported_results().items():
        for result in results:
            table = tables.setdefault(result.table, {"table": result.table, "source": result.source, "rows": []})
            table["rows"].append({"model": model, **vars(result),
                                  "ours": _ours(newest[model]) if model in newest else None})
    ordered = sorted(tables.values(), key=lambda table: int(table["table"].split()[-1]))
    return {"schema": PAPER_SCHEMA, "artifacts": str(root), "filters": filters.to_json(), "tables": ordered,
            "models_measured": sorted(newest), "notes": NOTES}
