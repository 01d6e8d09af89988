"""What a report shows, read from the artifact store: manifests, bench records, training logs, the papers' figures.

Every number comes from one of those records; what a record lacks stays None (printed as "—"). One
measurement row per (target, variant, threads, batch) of an artifact: the newest bench record's values,
with the p50 of every round (every stored bench record of that key) beside it, which is what decides
noise in `--compare`. The export's own quick latency check (manifest ``latency``) is a row of target
"local" with source "export check".
"""

from __future__ import annotations

import csv
import fnmatch
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from toolchain.artifacts import BENCH_DIR, FP32_NAME, INT8_NAME, MANIFEST_NAME, is_artifact_id, read_manifest
from toolchain.bench.peak import achieved, peak_dtype, variant_peak
from toolchain.bench.results import validate_result
from toolchain.errors import ArtifactError, BenchmarkError, UsageError
from toolchain.manifest import Manifest

REPORT_SCHEMA = "toolchain.report/1"
METRICS_NAME = "metrics.csv"  # toolchain.training.runs writes it beside each checkpoint (one row per epoch)
EXPORT_CHECK = "export check"
BENCH_SOURCE = "bench"
# toolchain.sweep.study writes these (not imported from there: the report needs neither optuna nor ray)
SWEEPS_DIR, SWEEP_SUMMARY, SWEEP_SCHEMA = "sweeps", "sweep.json", "toolchain.sweep/1"


@dataclass(frozen=True)
class Filters:
    """Which artifacts and measurements a report takes: model name pattern, not before `since`, one target."""

    model: str = "*"
    since: datetime | None = None
    target: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "since": self.since.isoformat() if self.since else None, "target": self.target}


def parse_since(text: str | None) -> datetime | None:
    """--since: an ISO date or date-time (UTC when it names no zone)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {text!r} is not a date", "give an ISO date or time, e.g. --since 2026-12-01 "
                         "or --since 2026-12-01T08:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _moment(text: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def artifact_folders(root: Path) -> list[Path]:
    """Every artifact folder of a store (``<model>/<id>/manifest.json``), sorted."""
    if not root.is_dir():
        raise ArtifactError(f"artifact store {root} does not exist or is not a folder",
                            "pass the folder `toolchain export` wrote to (--artifacts), e.g. --artifacts artifacts")
    try:
        return sorted(path.parent for path in root.glob(f"*/*/{MANIFEST_NAME}") if is_artifact_id(path.parent.name))
    except OSError as exc:
        raise ArtifactError(f"cannot read the artifact store {root}: {exc.strerror or exc}",
                            "check the folder's permissions (--artifacts)") from None


def _read_json(path: Path, what: str, unreadable_hint: str, invalid_hint: str) -> Any:
    """A JSON file of the store; an unreadable or invalid one is one error naming it (``what``: its kind)."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ArtifactError(f"cannot read {what} {path}: {exc.strerror or exc}", unreadable_hint) from None
    except ValueError as exc:
        raise ArtifactError(f"{what} {path} is not valid JSON: {exc}", invalid_hint) from None


def read_bench_record(path: Path) -> dict[str, Any]:
    """One stored bench result, checked against its schema; errors name the file."""
    document = _read_json(path, "bench record", "check its permissions, or delete it",
                          "delete it (a bench rerun writes a new one)")
    try:
        return validate_result(document)
    except BenchmarkError as error:
        raise BenchmarkError(f"{path}: {error.message}", "delete it, or rerun the bench to write a new one") from None


def bench_records(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The artifact's stored bench records, oldest first."""
    bench = folder / BENCH_DIR
    if not bench.is_dir():
        return []
    found = [(path, read_bench_record(path)) for path in sorted(bench.glob("*.json"))]
    return sorted(found, key=lambda item: (str(item[1].get("created", "")), item[0].name))


def training_log(manifest: Manifest) -> dict[str, Any]:
    """The checkpoint's run log (metrics.csv beside it), or where it was looked for and why there is none."""
    checkpoint = manifest.inputs.get("checkpoint") if manifest.kind == "export" else None
    if not isinstance(checkpoint, dict) or not checkpoint.get("file"):
        return {"file": None, "epochs": [], "note": "no checkpoint (an imported ONNX model): no training log"}
    path = Path(str(checkpoint["file"])).parent / METRICS_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {"file": str(path), "epochs": [], "note": f"no training log at {path} (the run folder moved or was "
                                                        "not made by `toolchain train`)"}
    except OSError as exc:
        raise ArtifactError(f"cannot read training log {path}: {exc.strerror or exc}",
                            "check its permissions, or move it away") from None
    epochs = []
    try:
        for row in csv.DictReader(text.splitlines()):
            epochs.append({key: float(value) if key != "epoch" else int(value) for key, value in row.items()
                           if key and value not in (None, "")})
        if epochs and not all("epoch" in row and "test_top1" in row for row in epochs):
            raise ValueError("no epoch or test_top1 column")
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"training log {path} is not a toolchain metrics.csv: {exc}",
                            "fix or delete it (the report reads it for the training curves)") from None
    return {"file": str(path), "epochs": epochs, "note": None}


def _gate(manifest: Manifest) -> dict[str, Any]:
    quantization = manifest.quantization
    return {"method": quantization.get("method"), "percentile": quantization.get("percentile"),
            "equalization": quantization.get("equalization"),
            "format": manifest.settings.get("quantization", {}).get("format"),
            "gate_engaged": quantization.get("gate_engaged"), "kept_float": list(manifest.kept_float),
            "max_drop_pp": manifest.accuracy.max_drop_pp,
            "calibration_search": list(quantization.get("calibration_search") or []),
            "steps": list(quantization.get("steps") or []), "qat": quantization.get("qat"),
            "defaults_reason": quantization.get("defaults_reason"),
            "reduce_range_reason": quantization.get("reduce_range_reason")}


def _sizes(manifest: Manifest) -> dict[str, Any]:
    checkpoint = manifest.inputs.get("checkpoint")
    paper_style = checkpoint.get("bytes") if isinstance(checkpoint, dict) else None
    return {"paper_style_bytes": paper_style, "onnx_fp32_bytes": manifest.files[FP32_NAME].bytes,
            "onnx_int8_bytes": manifest.files[INT8_NAME].bytes}


def _macs(folder: Path, records: Iterable[dict[str, Any]]) -> tuple[int | None, str | None]:
    for document in records:
        compute = document.get("compute")
        if isinstance(compute, dict) and isinstance(compute.get("macs"), int):
            return compute["macs"], compute.get("macs_source")
    from toolchain.graph.macs import MACS_SOURCE, graph_macs

    return graph_macs(folder / FP32_NAME), MACS_SOURCE


def _bench_rows(manifest: Manifest, records: list[tuple[Path, dict[str, Any]]], macs: int | None) -> list[dict]:
    rounds: dict[tuple, list[dict[str, Any]]] = {}
    for path, document in records:
        target = document.get("artifact", {}).get("target") or document.get("remote", {}).get("profile") or "local"
        remote = document.get("remote") if isinstance(document.get("remote"), dict) else {}
        # which machine: a fleet's inventory name, else the address (hosts of one profile stay apart)
        machine = remote.get("host") or remote.get("address")
        agreed = {(item.get("variant"), item.get("threads"), item.get("batch")): item.get("agreement_pct")
                  for item in document.get("agreement", []) if isinstance(item, dict)}
        compute = document.get("compute") if isinstance(document.get("compute"), dict) else {}
        facts = document["target"]
        for entry in document["results"]:
            latency = entry["latency_ms"]
            # INT8 rows: the INT8 peak; FP32 rows (and every row of a record older than the INT8 peak): float32
            peak, why = variant_peak(compute, entry["variant"])
            value = peak.gflops.get(int(entry["threads"])) if peak else None
            rate = ({"gflops": entry.get("gflops"), "pct_of_peak": entry.get("pct_of_peak")} if "gflops" in entry
                    else achieved(macs, entry["batch"], latency, value) if macs else {"gflops": None,
                                                                                      "pct_of_peak": None})
            host = manifest.accuracy.variant(entry["variant"])
            row = {"target": target, "host": machine, "source": BENCH_SOURCE, "hostname": facts["hostname"], "arch": facts["arch"],
                   "cpu": facts["cpu_model"], "cores": facts["cores"], "onnxruntime": facts["onnxruntime"],
                   "emulated": facts["emulated"], "variant": entry["variant"], "threads": entry["threads"],
                   "batch": entry["batch"], "p50_ms": latency["p50"], "p90_ms": latency["p90"],
                   "p99_ms": latency["p99"], "throughput_ips": entry["throughput_ips"],
                   "peak_rss_mb": entry["peak_rss_mb"], "top1": entry["accuracy"]["top1"],
                   "top1_host": host.top1 if host else None,
                   "agreement_pct": agreed.get((entry["variant"], entry["threads"], entry["batch"])),
                   "gflops": rate["gflops"], "pct_of_peak": rate["pct_of_peak"],
                   "peak_source": peak.source if peak and value else None,
                   "peak_dtype": peak.dtype if peak else peak_dtype(entry["variant"]), "peak_value": value,
                   "peak_method": peak.method if peak else why, "created": document.get("created"),
                   "record": str(path)}
            rounds.setdefault((target, machine, entry["variant"], entry["threads"], entry["batch"]), []).append(row)
    rows = []
    for series in rounds.values():
        newest = dict(series[-1])
        newest["rounds"] = len(series)
        newest["p50_ms_rounds"] = [row["p50_ms"] for row in series]
        rows.append(newest)
    return rows


def _export_rows(manifest: Manifest, macs: int | None) -> list[dict[str, Any]]:
    latency = manifest.latency
    rows = []
    for variant in ("fp32", "int8"):
        timing = latency.get(variant)
        if not isinstance(timing, dict) or "p50" not in timing:
            continue
        threads, batch = latency.get("threads"), latency.get("batch") or 1
        rate = achieved(macs, batch, timing, None) if macs else {"gflops": None, "pct_of_peak": None}
        host = manifest.accuracy.variant(variant)
        rows.append({"target": "local", "host": None, "source": EXPORT_CHECK, "hostname": None, "arch": None,
                     "cpu": latency.get("cpu"), "cores": None, "onnxruntime": manifest.versions.get("onnxruntime"),
                     "emulated": False, "variant": variant, "threads": threads, "batch": batch,
                     "p50_ms": timing["p50"], "p90_ms": timing.get("p90"), "p99_ms": timing.get("p99"),
                     "throughput_ips": None, "peak_rss_mb": None, "top1": host.top1 if host else None,
                     "top1_host": host.top1 if host else None, "agreement_pct": None, "gflops": rate["gflops"],
                     "pct_of_peak": None, "peak_source": None, "peak_dtype": peak_dtype(variant), "peak_value": None,
                     "peak_method": "export check: no peak measured with it", "created": manifest.created,
                     "record": MANIFEST_NAME, "rounds": 1, "p50_ms_rounds": [timing["p50"]]})
    return rows


def artifact_entry(folder: Path, filters: Filters = Filters(), record: Path | None = None) -> dict[str, Any] | None:
    """Everything the report says about one artifact (None when the filters leave nothing of it).

    `record`: take only that bench record of the artifact (one run), not every one stored.
    """
    from toolchain.models.registry import paper_results

    manifest = read_manifest(folder)
    if not fnmatch.fnmatchcase(manifest.model, filters.model):
        return None
    records = [(record, read_bench_record(record))] if record else bench_records(folder)
    if filters.since:
        records = [(path, doc) for path, doc in records if (_moment(doc.get("created")) or filters.since) >= filters.since]
        made = _moment(manifest.created)
        if not records and (made is None or made < filters.since):
            return None
    macs, macs_source = _macs(folder, [doc for _, doc in records])
    rows = _export_rows(manifest, macs) + _bench_rows(manifest, records, macs)
    if filters.target:
        rows = [row for row in rows if row["target"] == filters.target]
        if not rows:
            return None
    rows.sort(key=lambda row: (row["source"] != EXPORT_CHECK, row["target"], row["variant"], row["threads"],
                               row["batch"]))
    accuracy = manifest.accuracy
    return {"model": manifest.model, "artifact_id": manifest.artifact_id, "folder": str(folder),
            "created": manifest.created, "kind": manifest.kind, "dataset": manifest.dataset.name,
            "paper": [vars(result) for result in paper_results(manifest.model)],
            "accuracy": {"fp32_top1": accuracy.fp32.top1, "int8_top1": accuracy.int8.top1,
                         "count": accuracy.fp32.count, "drop_pp": accuracy.drop_pp,
                         "max_drop_pp": accuracy.max_drop_pp},
            "sizes": _sizes(manifest), "gate": _gate(manifest), "macs": macs, "macs_source": macs_source,
            "training": training_log(manifest), "measurements": rows, "optimize": dict(manifest.optimize) or None}


def collect(root: Path, filters: Filters = Filters()) -> dict[str, Any]:
    """The report document of a store: one entry per artifact the filters keep, newest first per model."""
    entries = [entry for folder in artifact_folders(root) if (entry := artifact_entry(folder, filters))]
    if not entries:
        raise ArtifactError(f"no artifact in {root} matches (model {filters.model!r}"
                            + (f", since {filters.since:%Y-%m-%d %H:%M}" if filters.since else "")
                            + (f", target {filters.target!r}" if filters.target else "") + ")",
                            "make one with `toolchain export --model M` (and `toolchain bench`), or widen the filters")
    entries.sort(key=lambda entry: entry["created"], reverse=True)
    entries.sort(key=lambda entry: entry["model"])  # stable: newest first within a model
    return {"schema": REPORT_SCHEMA, "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "artifacts": str(root), "filters": filters.to_json(), "models": entries, "sweeps": sweeps(root)}


def sweeps(root: Path) -> list[dict[str, Any]]:
    """Every sweep of the store (``sweeps/<name>/sweep.json``, written by `toolchain sweep`), by name."""
    from toolchain.sweep.pareto import pareto_front

    found = []
    for path in sorted((root / SWEEPS_DIR).glob(f"*/{SWEEP_SUMMARY}")):
        document = _read_json(path, "sweep summary", "check its permissions",
                              "write it again: toolchain sweep show SPACE.toml")
        if not isinstance(document, dict) or document.get("schema") != SWEEP_SCHEMA or not isinstance(
                document.get("trials"), list):
            raise ArtifactError(f"{path} is not a sweep summary", "write it again: toolchain sweep show SPACE.toml")
        # the front is computed here from the stored trials, not taken from the file
        complete = {trial["number"]: [trial["values"][key] for key in document["objectives"]]
                    for trial in document["trials"] if trial.get("state") == "COMPLETE" and trial.get("values")}
        document["pareto"] = pareto_front(complete, document["directions"])
        document["summary_file"] = str(path)
        found.append(document)
    return found
