"""The gate pass: INT8 top-1 on the eval set against FP32's, and the float nodes that bring it within the gate."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain.pipeline.config import GATE_FIELDS, QuantSettings
from toolchain.pipeline.passes import ModelRecord, Pass, register_pass

if TYPE_CHECKING:
    import numpy as np

    from toolchain.pipeline.context import PassContext
    from toolchain.quantization.gate import GateSearch

PREDICTIONS_NAME = "predictions.npz"


@register_pass
class GatePass(Pass):
    """``config`` is the run's resolved `QuantSettings` (the same the quantize pass had); hashed: the gate fields."""

    name = "gate"
    # 2: exact ties of the top logits recorded; 3: --method auto tries more calibrations; 4: a fine-tune's drop is
    # measured from the checkpoint it started from; 5: auto also tries the other format and per-tensor weights;
    # 6: ties in the ranking ordered by each node's effect on the logits; 7: auto also tries lower percentiles;
    # 8: then the same calibrations with the activation channels equalized
    version = 8

    def config_record(self) -> dict[str, Any]:
        return {key: value for key, value in self.config.to_dict().items() if key in GATE_FIELDS}

    def run(self, record: ModelRecord, context: "PassContext", folder: Path) -> ModelRecord:
        import numpy as np

        from toolchain.evaluators.accuracy import accuracy_from_logits, onnx_logits
        from toolchain.graph.model import compact_names
        from toolchain.quantization.gate import GateSearch

        started = time.perf_counter()
        settings: QuantSettings = self.config
        evaluation = context.evaluation
        if evaluation.labels is None:
            from toolchain.errors import QuantizationError

            raise QuantizationError("the eval set has no labels", "pass an eval set with labels (.npz with 'labels')")
        fp32_logits = onnx_logits(record.fp32, evaluation.images)
        fp32 = accuracy_from_logits(fp32_logits, evaluation.labels)
        baseline = fine_tune_baseline(context)
        reference = fp32.top1 if baseline is None else baseline["fp32_top1"]
        if baseline is not None:
            context.on_message(f"the drop is measured from the checkpoint the fine-tune started from: FP32 "
                               f"{reference:.2f}% there, {fp32.top1:.2f}% after fine-tuning")
        scratch = context.scratch / "gate"
        scratch.mkdir(exist_ok=True)
        first = settings.with_method()
        search = GateSearch(record.files["prepared"], record.files["calibration_cache"], first, evaluation.images,
                            evaluation.labels, reference, scratch, context.on_message,
                            method_pinned=settings.method != "auto")
        search.attempts[()] = (search.measure((), record.int8), record.int8)
        calibrations = [search.calibration_record(seconds=record.note("quantization").get("calibration_seconds", 0.0))]
        if search.first.drop_pp > settings.max_drop and len(settings.calibration_attempts()) > 1:
            search = self._calibration_search(search, record, context, calibrations)
        chosen, ranking, candidates, tie_break = self._search(search, record, context)
        step, path = search.attempts[chosen]
        compact_names(path)
        shipped = folder / "model.int8.onnx"
        shipped.write_bytes(path.read_bytes())
        int8_logits = onnx_logits(shipped, evaluation.images)  # the shipped file's own answers
        int8 = accuracy_from_logits(int8_logits, evaluation.labels)
        predictions = folder / PREDICTIONS_NAME
        np.savez(predictions, fp32=fp32_logits.argmax(axis=1), int8=int8_logits.argmax(axis=1))
        drop = round(reference - int8.top1, 4)
        gate = {"fp32_top1": fp32.top1, "int8_top1": int8.top1, **({"baseline": baseline} if baseline else {}), "drop_pp": drop, "max_drop_pp": settings.max_drop,
                "eval_count": int(len(evaluation.labels)),
                "gate_engaged": len(search.attempts) > 1 or len(calibrations) > 1,
                "method": search.settings.method, "format": search.settings.format,
                **({"percentile": search.settings.percentile} if search.settings.method == "percentile" else {}),
                **({"equalization": search.equalization} if search.equalization else {}),
                "per_channel": search.settings.per_channel, "calibration_search": calibrations,
                "kept_float": list(step.kept_float), "excluded_by_user": list(settings.exclude_nodes),
                "quantizable_nodes": candidates, "steps": [item.to_dict() for item in search.steps()],
                "sensitivity": [score.to_dict() for score in ranking[:max(10, len(step.kept_float))]],
                **({"tie_break": tie_break} if tie_break else {}),
                "seconds": time.perf_counter() - started}
        return replace(record, int8=shipped).with_files(predictions=predictions).with_notes(
            quantization=gate, accuracy={"fp32": fp32.to_dict(), "int8": int8.to_dict(), "drop_pp": drop,
                                         **({"baseline_top1": reference} if baseline else {}),
                                         "max_drop_pp": settings.max_drop, **_ties(fp32_logits, int8_logits)})

    def _calibration_search(self, search: "GateSearch", record: ModelRecord, context: "PassContext",
                            calibrations: list[dict]) -> "GateSearch":
        """Try the next calibrations of --method auto, all INT8, until one passes; else the best for the float search."""
        from toolchain.passes.quantize import describe
        from toolchain.quantization.gate import GateSearch
        from toolchain.quantization.ort import calibrate

        settings: QuantSettings = self.config
        searches = [search]

        def attempt_calibration(prepared: Path, calibration: QuantSettings, equalization: dict | None) -> bool:
            label = ("equalized, " if equalization else "") + calibration.calibration_label
            context.on_message(f"drop {searches[-1].first.drop_pp:.2f} pp exceeds --max-drop "
                               f"{settings.max_drop:g}: trying {label} calibration")
            started = time.perf_counter()
            name = label.replace(",", "").replace(" ", "-")
            cache = search.scratch / f"calibration-{name}.json"
            calibrate(prepared, context.calibration.images, record.input_name, calibration, cache)
            seconds = time.perf_counter() - started
            attempt = GateSearch(prepared, cache, calibration, search.images, search.labels, search.fp32_top1,
                                 search.scratch / name, context.on_message, method_pinned=False,
                                 equalization=equalization)
            attempt.scratch.mkdir(exist_ok=True)
            attempt.attempt(())
            calibrations.append(attempt.calibration_record(seconds))
            searches.append(attempt)
            return attempt.first.drop_pp <= settings.max_drop

        for calibration in settings.calibration_attempts()[1:]:
            if attempt_calibration(search.prepared, calibration, None):
                return searches[-1]
        equalized = self._equalize(search, record, context)
        if equalized is not None:
            for calibration in settings.calibration_attempts():
                if attempt_calibration(equalized[0], calibration, equalized[1]):
                    return searches[-1]
        best = min(searches, key=lambda item: item.first.drop_pp)
        for layout in best.settings.layout_alternatives():  # the best ranges, another weight layout: no recalibration
            context.on_message(f"no calibration meets the gate with every node INT8 ({describe(best.settings)}, best "
                               f"{best.first.drop_pp:.2f} pp with {best.settings.calibration_label}): trying {describe(layout)}")
            name = f"{layout.calibration_label.replace(' ', '-')}-{layout.format}-{'channel' if layout.per_channel else 'tensor'}"
            name = ("equalized-" if best.equalization else "") + name
            attempt = GateSearch(best.prepared, best.cache, layout, search.images, search.labels, search.fp32_top1,
                                 search.scratch / name, context.on_message, method_pinned=False,
                                 equalization=best.equalization)
            attempt.scratch.mkdir(exist_ok=True)
            attempt.attempt(())
            calibrations.append(attempt.calibration_record(0.0))
            searches.append(attempt)
            if attempt.first.drop_pp <= settings.max_drop:
                return attempt
        best = min(searches, key=lambda item: item.first.drop_pp)
        context.on_message(f"no calibration meets the gate with every node INT8; the best is "
                           f"{'equalized, ' if best.equalization else ''}{best.settings.calibration_label}, "
                           f"{describe(best.settings)} ({best.first.drop_pp:.2f} pp)")
        return best

    def _equalize(self, search: "GateSearch", record: ModelRecord, context: "PassContext"
                  ) -> tuple[Path, dict] | None:
        """The prepared model with its activation channels equalized (`toolchain.graph.equalize`), checked
        against the reference like every rewrite; None when nothing in it can be equalized."""
        from toolchain.errors import ParityError
        from toolchain.graph.equalize import EQUALIZE_ALPHA, equalize_file

        started = time.perf_counter()
        path = search.scratch / "equalized.onnx"
        done = equalize_file(search.prepared, path, context.calibration.images, record.input_name)
        seconds = time.perf_counter() - started
        if not done.groups:
            return None
        try:
            measured, agreement = context.check_parity(path, "activation equalization (ONNX vs the reference)")
        except ParityError as exc:  # exact up to rounding by construction: a model where it is not keeps its ranges
            context.on_message(f"activation equalization skipped: {exc.message}")
            return None
        equalization = {**done.to_dict(), "alpha": EQUALIZE_ALPHA, "parity_max_abs": measured,
                        "top1_agreement": agreement, "seconds": round(seconds, 3)}
        context.on_message(f"no calibration meets the gate: equalizing activation channels ({done.channels} channels "
                           f"in {done.groups} groups rescaled into the weights that read them, exact: max |d| "
                           f"{measured:.3g}) and calibrating again")
        return path, equalization

    def _search(self, search: "GateSearch", record: ModelRecord, context: "PassContext"
                ) -> tuple[tuple[str, ...], list, int, dict | None]:
        """(the nodes to keep in float, the ranking, how many nodes INT8 quantizes, how its ties were broken),
        on the search's calibration."""
        import onnx

        from toolchain.graph.qdq import quantizable_nodes
        from toolchain.quantization.gate import SENSITIVITY_IMAGES, kept_float_limit
        from toolchain.quantization.ort import quantize_static_int8, quantized_op_types
        from toolchain.quantization.sensitivity import rank_nodes

        settings: QuantSettings = search.settings
        prepared, cache = search.prepared, search.cache
        # the scores come from a QDQ twin that quantizes exactly the op types the shipped format does
        op_types = quantized_op_types(settings.format)
        twin = quantize_static_int8(prepared, search.scratch / "twin.qdq.onnx", settings, cache, quant_format="qdq",
                                    op_types=op_types)
        candidates = len(quantizable_nodes(onnx.load(str(twin)), op_types))
        first = search.first
        if first.drop_pp <= settings.max_drop:
            return (), [], candidates, None
        limit = kept_float_limit(settings, candidates)
        context.on_message(f"drop {first.drop_pp:.2f} pp exceeds --max-drop {settings.max_drop:g}: scoring "
                           f"{candidates} quantized nodes, keeping at most {limit} in float")
        ranking, tie_break = rank_nodes(prepared, twin, context.calibration.images[:SENSITIVITY_IMAGES],
                                        record.input_name, op_types, head=limit)
        if tie_break["groups"]:
            moved = sum(group["reordered"] for group in tie_break["groups"])
            context.on_message(f"{len(tie_break['groups'])} tie(s) in the ranking ordered by each node's effect on "
                               f"the logits ({tie_break['measured_nodes']} node(s) measured, {moved} order(s) changed)")
        names = tuple(score.node for score in ranking)
        count = search.smallest_passing(names, min(limit, len(names)), candidates)
        return search.pruned(names[:count]), ranking, candidates, tie_break


def fine_tune_baseline(context: "PassContext") -> dict | None:
    """For a checkpoint made by quantization-aware fine-tuning: its parent's FP32 top-1 on the eval set, else None.

    The gate bounds what quantization costs the user's model. Measured from the fine-tuned checkpoint's
    own FP32, a fine-tune that damaged the network (measured: one that left hps-21-1x-v3 at chance) would
    pass beside an equally damaged INT8; measured from the parent, it fails as it should.
    """
    from toolchain.errors import CheckpointError
    from toolchain.evaluators.accuracy import accuracy_from_logits
    from toolchain.evaluators.reference import torch_array_logits
    from toolchain.hashing import sha256_file
    from toolchain.training.checkpoints import load_checkpoint

    source = context.source
    qat = (((getattr(source, "sidecar", None) or {}).get("training") or {}).get("qat"))
    if not isinstance(qat, dict):
        return None
    parent = qat.get("parent") or {}
    path = Path(str(parent.get("file", "")))
    if not path.is_file() or sha256_file(path) != parent.get("sha256"):
        raise CheckpointError(f"checkpoint {source.path} is a fine-tune of {path}, which is "
                              f"{'no longer the same file' if path.is_file() else 'missing'}",
                              "the gate measures the drop from that checkpoint: put it back, or export it again "
                              "(QAT reruns from it)")
    evaluation = context.evaluation
    logits = torch_array_logits(load_checkpoint(path, source.model).model, evaluation.images)
    return {"checkpoint": str(path), "sha256": parent["sha256"],
            "fp32_top1": accuracy_from_logits(logits, evaluation.labels).top1}


def _ties(fp32_logits: "np.ndarray", int8_logits: "np.ndarray") -> dict:
    """{"ties": {variant: {image: classes}}} for images whose top logits tie exactly (nothing when none do)."""
    import numpy as np

    ties = {}
    for variant, logits in (("fp32", fp32_logits), ("int8", int8_logits)):
        rows = logits.reshape(len(logits), -1)
        top = rows == rows.max(axis=1, keepdims=True)
        tied = {str(image): [int(c) for c in np.flatnonzero(top[image])] for image in np.flatnonzero(top.sum(axis=1) > 1)}
        if tied:
            ties[variant] = tied
    return {"ties": ties} if ties else {}
