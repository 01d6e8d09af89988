"""The package pass: the artifact folder (both models, the labeled eval set, a quick latency check, the manifest)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from toolchain.pipeline.passes import ModelRecord, Pass, register_pass

if TYPE_CHECKING:
    from toolchain.pipeline.context import PassContext


@register_pass
class PackagePass(Pass):
    """Writes into the staging folder the runner publishes; the manifest is written last."""

    name = "package"

    def run(self, record: ModelRecord, context: "PassContext", folder: Path) -> ModelRecord:
        import numpy as np

        from toolchain.artifacts import file_record, utc_now, write_evalset
        from toolchain.evaluators.latency import quick_latency
        from toolchain.fsutil import atomic_write_json
        from toolchain.graph.model import count_nodes
        from toolchain.manifest import EVALSET_NAME, FP32_NAME, INT8_NAME, MANIFEST_NAME, Manifest

        assert record.int8 is not None
        started = time.perf_counter()
        evaluation = context.evaluation
        fp32, int8 = folder / FP32_NAME, folder / INT8_NAME
        shutil.copyfile(record.fp32, fp32)
        shutil.copyfile(record.int8, int8)
        with np.load(record.files["predictions"]) as predictions:
            write_evalset(folder / EVALSET_NAME, evaluation.images, evaluation.labels, predictions["fp32"],
                          predictions["int8"])
        latency = quick_latency({"fp32": fp32, "int8": int8}, folder / EVALSET_NAME)
        context.timings["latency_s"] = time.perf_counter() - started
        facts = context.facts
        lineage = [entry.to_json() for entry in context.lineage]
        lineage.append({"pass": self.name, "version": self.version, "config": self.config_record(),
                        "key": context.artifact_id, "cached": False, "seconds": round(time.perf_counter() - started, 4)})
        c, h, w = evaluation.image_shape
        record_of_eval = evaluation.record
        dataset = {"name": facts["dataset"]["name"] or record_of_eval.get("dataset"),
                   "class_names": facts["dataset"]["class_names"] or record_of_eval.get("class_names"),
                   "mean": record_of_eval.get("resolved_mean"), "std": record_of_eval.get("resolved_std")}
        manifest = Manifest.from_json({
            "schema": "toolchain.manifest/1", "artifact_id": context.artifact_id, "model": context.model,
            "created": utc_now(), "opset": record.opset, "dataset": dataset,
            "inputs": {**facts["inputs"], "calibration": context.calibration.record, "evalset": evaluation.record},
            "settings": facts["settings"], "parity": record.note("parity"),
            "nodes": {**record.note("nodes"), "int8": count_nodes(int8)}, "versions": facts["versions"],
            "input": {"name": record.input_name, "shape": [None, c, h, w]}, "output": {"name": record.output_name},
            "files": {name: file_record(folder / name) for name in (FP32_NAME, INT8_NAME, EVALSET_NAME)},
            "accuracy": {**record.note("accuracy"), "evalset": "evalset.npz (disjoint from the calibration set)"},
            "kept_float": record.note("quantization").get("kept_float", []),
            "quantization": {**record.note("quantization"), "reduce_range_reason": facts["reduce_range_reason"]},
            "latency": latency, "timings": {**context.timings, "total_s": context.elapsed()},
            "hash_inputs": facts["hash_inputs"], "lineage": lineage}, "the new manifest")
        atomic_write_json(folder / MANIFEST_NAME, manifest.to_json())  # last: a folder with a manifest is complete
        context.manifest = manifest
        return record
