"""The artifact `toolchain optimize` chose for a target, and the store's record that it is that target's.

The artifact is derived from the one optimized: the same FP32 file and eval images, as INT8 file the
fastest INT8 candidate that passed the gate on the target (the artifact's own INT8 file where none did), the
host's answers of that INT8 file (pred_int8, for the agreement check of every later bench), its accuracy, its
quantization notes and the nodes it keeps in float, and the decision log in the manifest's ``optimize``
section, which also says which of the two models the target should run (``variant``: FP32 where FP32 won).
Its id hashes the artifact it came from, the target, the variant and the INT8 file: the same choice made
again finds the same folder; each run's full log is kept beside it as optimize/<UTC time>.json.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

from toolchain.artifacts import (EVALSET_NAME, FP32_NAME, INT8_NAME, MANIFEST_NAME, Artifact, ArtifactStore,
                                 artifact_id, file_record, read_evalset, utc_now, write_evalset)
from toolchain.fsutil import atomic_write_json
from toolchain.manifest import Manifest
from toolchain.optimize.candidates import FP32, Candidate, artifact_candidate
from toolchain.optimize.decide import CHOSEN, LOST, Decision
from toolchain.optimize.targets import target_key
from toolchain.remote.target import TargetProfile

Messages = Callable[[str], None]
LOG_DIR = "optimize"
PASS_VERSION = 1


def shipped_int8(artifact: Artifact, candidates: Sequence[Candidate], decision: Decision) -> Candidate:
    """The INT8 file the chosen artifact carries: the winner, else the fastest INT8 candidate that passed."""
    by_name = {candidate.name: candidate for candidate in candidates}
    if decision.winner != FP32:
        return by_name[decision.winner]
    passed = [(entry["target"]["p50_ms"], entry["candidate"]) for entry in decision.entries
              if entry["verdict"] in (CHOSEN, LOST) and entry["candidate"] != FP32]
    return by_name[min(passed)[1]] if passed else artifact_candidate(artifact)


def write_choice(store: ArtifactStore, artifact: Artifact, candidates: Sequence[Candidate], decision: Decision,
                 log: dict[str, Any], profile: TargetProfile, on_message: Messages = lambda _: None
                 ) -> tuple[Path, Path, Path]:
    """Publish (or find) the chosen artifact, keep this run's log beside it, record it as the target's."""
    int8 = shipped_int8(artifact, candidates, decision)
    key = target_key(profile)
    identity = {"kind": "optimize", "base": artifact.artifact_id, "target": key, "variant": decision.variant,
                "int8_sha256": int8.sha256}
    identifier = artifact_id(identity)
    folder = store.find(artifact.model, identifier)
    if folder is None:
        on_message(f"writing the chosen artifact {artifact.model}/{identifier} ({decision.winner})")
        with store.staging() as stage:
            _write(stage, artifact, int8, identifier, identity, log)
            folder = store.publish(stage, artifact.model, identifier)
    else:
        on_message(f"the same choice as before: {folder}")
    log_path = folder / LOG_DIR / f"{datetime.fromisoformat(log['created']):%Y%m%dT%H%M%SZ}.json"
    atomic_write_json(log_path, log)
    choice = store.choose(artifact.model, key, {
        "artifact_id": identifier, "model": artifact.model, "base_artifact": artifact.artifact_id,
        "target": log["target"], "variant": decision.variant, "candidate": decision.winner,
        "int8_candidate": int8.name, "chosen": log["created"], "log": str(log_path)})
    return folder, choice, log_path


def _write(stage: Path, artifact: Artifact, int8: Candidate, identifier: str, identity: dict[str, Any],
           log: dict[str, Any]) -> None:
    """The derived artifact's files and manifest (last) in the staging folder."""
    from toolchain.evaluators.accuracy import accuracy_from_logits, onnx_logits
    from toolchain.evaluators.latency import quick_latency
    from toolchain.graph.model import count_nodes
    from toolchain.passes.gate import _ties

    started = time.perf_counter()
    assert int8.path is not None
    shutil.copyfile(artifact.directory / FP32_NAME, stage / FP32_NAME)
    shutil.copyfile(int8.path, stage / INT8_NAME)
    arrays = read_evalset(artifact.directory / EVALSET_NAME)
    logits = onnx_logits(stage / INT8_NAME, arrays["images"])
    write_evalset(stage / EVALSET_NAME, arrays["images"], arrays["labels"], arrays["pred_fp32"], logits.argmax(axis=1))
    base = artifact.manifest.to_json()
    accuracy = dict(base["accuracy"])
    int8_accuracy = accuracy_from_logits(logits, arrays["labels"])
    reference = artifact.manifest.accuracy.baseline_top1 or artifact.manifest.accuracy.fp32.top1
    ties = dict(accuracy.get("ties") or {})
    ties.pop("int8", None)
    own = _ties(logits, logits).get("ties", {}).get("int8")  # the INT8 file's own exact ties (FP32's are the base's)
    if own:
        ties["int8"] = own
    accuracy.update(int8=int8_accuracy.to_dict(), drop_pp=round(reference - int8_accuracy.top1, 4))
    accuracy["ties"] = ties
    if not ties:
        accuracy.pop("ties")
    quantization = {**(int8.gate or artifact.manifest.quantization), "chosen_by": "toolchain optimize",
                    "candidate": int8.name}
    settings = {**base["settings"], "quantization": int8.settings or base["settings"].get("quantization")}
    lineage = [*base["lineage"], {"pass": "optimize", "version": PASS_VERSION,
                                  "config": {"target": identity["target"], "variant": identity["variant"],
                                             "candidate": int8.name}, "key": identifier, "cached": False,
                                  "seconds": round(time.perf_counter() - started, 4)}]
    document = {**base, "artifact_id": identifier, "created": utc_now(), "accuracy": accuracy,
                "kept_float": [*int8.kept_float, *int8.kept_for_latency], "quantization": quantization,
                "settings": settings, "nodes": {**base["nodes"], "int8": count_nodes(stage / INT8_NAME)},
                "files": {name: file_record(stage / name) for name in (FP32_NAME, INT8_NAME, EVALSET_NAME)},
                "latency": quick_latency({"fp32": stage / FP32_NAME, "int8": stage / INT8_NAME}, stage / EVALSET_NAME),
                "hash_inputs": {**base["hash_inputs"], "optimize": identity}, "lineage": lineage, "optimize": log}
    document.pop("sizes", None)
    manifest = Manifest.from_json(document, "the chosen artifact's manifest")
    atomic_write_json(stage / MANIFEST_NAME, manifest.to_json())
