"""Quantization-aware fine-tuning: when post-training INT8 misses the gate, teach the weights the INT8 grid.

The library is torch.ao.quantization (FX graph mode), the QAT that ships inside the pinned torch: no extra
dependency that could pull another torch, and it traces these nets (plain convs, BN, ReLU/ELU, residual
adds) as they are. Fake quantization mirrors what ONNX Runtime's static INT8 will do here: per-channel
symmetric int8 weights (7-bit where the host's U8S8 kernels saturate), per-tensor affine uint8 (or int8)
activations. The activation ranges are those the export's minmax calibration computes: measured on the
checkpoint (fake quantization off) over the export's own calibration images, then frozen, so that the
weights learn the grid INT8 will really use (see `_calibrate_and_freeze_ranges`). After a bounded
fine-tune (epochs, images, minutes) the learnt float
weights and BN statistics are copied back into the plain network and saved as a new checkpoint whose
sidecar names its parent (file, sha256) and the QAT settings: the pipeline then exports and quantizes that
checkpoint as usual, so the shipped INT8 is verified exactly as any other.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from toolchain.data import load_dataset
from toolchain.data.transforms import iterate_batches
from toolchain.errors import TrainingError
from toolchain.pipeline.config import QatSettings
from toolchain.training.checkpoints import CheckpointInfo, load_checkpoint, save_checkpoint
from toolchain.training.loop import EpochStats, TrainProgress, evaluate_with_loss, fit_batches

QAT_DIR = "qat"


@dataclass(frozen=True)
class QatResult:
    """The fine-tuned checkpoint and what the fine-tune did."""

    checkpoint: Path
    record: dict[str, Any]
    reused: bool


def qat_checkpoint_path(artifacts: Path, model: str, parent_sha256: str, settings: QatSettings,
                        weight_bits: int, activation_type: str, per_channel: bool = True,
                        calibration: dict[str, Any] | None = None) -> Path:
    """Where the fine-tune of this checkpoint with these settings lives (the same inputs reuse it);
    ``calibration``: the record of the images its activation ranges are measured on."""
    key = json.dumps({"parent": parent_sha256, "settings": settings.to_dict(), "weight_bits": weight_bits,
                      "calibration": calibration,
                      "activations": activation_type, "per_channel": per_channel,
                      "optimizer": "adam", "ranges": "calibrated-frozen"}, sort_keys=True)
    return artifacts / QAT_DIR / model / f"{parent_sha256[:12]}-{hashlib.sha256(key.encode()).hexdigest()[:8]}" / \
        "checkpoint.pt"


def rescale_batchnorm_after_relu(model: nn.Module) -> int:
    """In torch, what the batchnorm pass does in ONNX: each conv -> ReLU -> BN gives the BN's |scale| to its conv.

    So that the fake-quantized conv weights are the ones INT8 will hold (per-tensor weight scales are not
    blind to a per-channel factor). Exact: ReLU(a z) = a ReLU(z) for a > 0; the BN keeps sign * (x - a m) + beta
    (dead channels, running variance ~0, keep their scale, as there). Returns how many BNs changed.
    """
    changed = 0
    with torch.no_grad():
        for unit in model.modules():
            order = list(getattr(unit, "_modules", {}))
            if order != ["conv", "act", "bn"] or not isinstance(unit.act, nn.ReLU):
                continue
            bn, conv = unit.bn, unit.conv
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            moved = torch.where(bn.running_var < 1e-12, torch.ones_like(scale), scale.abs())
            live = moved == scale.abs()
            conv.weight *= moved.reshape(-1, *([1] * (conv.weight.dim() - 1)))
            if conv.bias is not None:
                conv.bias *= moved
            bn.weight.copy_(torch.where(live, torch.where(scale < 0, -1.0, 1.0), scale / moved))
            bn.running_mean *= moved
            bn.running_var.fill_(1.0 - bn.eps)
            changed += 1
    return changed


def _qconfig_mapping(weight_bits: int, activation_type: str, per_channel: bool = True) -> Any:
    from torch.ao.quantization import (FakeQuantize, MinMaxObserver, MovingAverageMinMaxObserver,
                                       MovingAveragePerChannelMinMaxObserver, QConfig, QConfigMapping)

    unsigned = activation_type == "uint8"
    # plain min/max, as the export's minmax calibration: measured once and frozen (_calibrate_and_freeze_ranges)
    activation = FakeQuantize.with_args(observer=MinMaxObserver, quant_min=0 if unsigned else -128,
                                        quant_max=255 if unsigned else 127,
                                        dtype=torch.quint8 if unsigned else torch.qint8,
                                        qscheme=torch.per_tensor_affine)
    limit = 2 ** (weight_bits - 1) - 1
    if per_channel:
        weight = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-limit,
                                        quant_max=limit, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                        ch_axis=0)
    else:
        weight = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=-limit, quant_max=limit,
                                        dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    return QConfigMapping().set_global(QConfig(activation=activation, weight=weight))


def _prepared(model: nn.Module, sample: torch.Tensor, weight_bits: int, activation_type: str,
              per_channel: bool = True) -> nn.Module:
    import warnings

    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice for its own successor (torchao)
            return prepare_qat_fx(copy.deepcopy(model).train(),
                                  _qconfig_mapping(weight_bits, activation_type, per_channel), example_inputs=(sample,))
    except Exception as exc:  # FX tracing raises assorted errors for untraceable code
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"quantization-aware training cannot trace this network: {detail[:160]}",
                            "export with --no-qat and raise --max-drop or --max-kept-float") from None


def _calibrate_and_freeze_ranges(prepared: nn.Module, images: torch.Tensor, batch_size: int) -> int:
    """Measure every activation range on ``images`` with fake quantization off, then freeze the ranges.

    The fine-tuned checkpoint is exported and calibrated again like any other, so the ranges INT8 ships are
    minmax over the calibration images of the float network. Moving-average ranges, re-estimated every batch
    from 32 images, are not those, nor are ranges measured with the weights fake-quantized: measured on the
    tests' tiny net with channels spread 10^k-fold (docs/quantization.md), they made INT8 worse than no
    fine-tune (48.7 % to 29.7 % and 20.7 % at k = 2.52) or recovered little (11.3 % to 17.7 % and 16.0 % at
    k = 2.6); calibrated on the float network and frozen, the same runs gave 56.3 % and 42.0 %. Weight
    ranges keep following the weights. Returns how many activation ranges were frozen.
    """
    from torch.ao.quantization import FakeQuantize

    every = [module for module in prepared.modules() if isinstance(module, FakeQuantize)]
    activations = [module for name, module in prepared.named_modules()
                   if isinstance(module, FakeQuantize) and "activation_post_process" in name]
    for module in every:  # the float network, weights included: minmax calibration sees that one
        module.disable_fake_quant()
    for module in activations:
        module.enable_observer()
    was_training = prepared.training
    prepared.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            prepared(images[start:start + batch_size])
    prepared.train(was_training)
    for module in every:
        module.enable_fake_quant()
    for module in activations:
        module.disable_observer()
    return len(activations)


def _freeze_batchnorm(prepared: nn.Module) -> None:
    """Keep every BN on its running statistics while the rest trains (``train()`` included).

    With batch statistics an ill-conditioned checkpoint (BN scales of 1e4 against tiny conv weights, the
    very case QAT is for) computes another function altogether and diverges within a few batches; the
    usual QAT practice of frozen BN statistics keeps the function the checkpoint's and the gate's FP32.
    """
    def train(mode: bool = True) -> nn.Module:
        nn.Module.train(prepared, mode)
        for module in prepared.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return prepared

    prepared.train = train  # type: ignore[method-assign]
    prepared.train()


def _copy_back(prepared: nn.Module, model: nn.Module) -> None:
    """The fine-tuned weights and BN statistics into the plain network (fake-quant state is left behind)."""
    learnt = prepared.state_dict()
    own = model.state_dict()

    def source(name: str) -> str:
        # FX fuses conv -> BN into one module: "<unit>.bn.<x>" lives at "<unit>.conv.bn.<x>" there
        head, found, tail = name.rpartition(".bn.")
        return name if name in learnt or not found else f"{head}.conv.bn.{tail}"

    missing = [name for name in own if source(name) not in learnt]
    if missing:
        raise TrainingError(f"quantization-aware training renamed {missing[0]} (and {len(missing) - 1} more)",
                            "export with --no-qat; this network's layout is not one QAT can hand back")
    model.load_state_dict({name: learnt[source(name)] for name in own})


def fine_tune(checkpoint: Path, output: Path, settings: QatSettings, weight_bits: int, activation_type: str,
              calibration: Callable[[], np.ndarray], data_dir: Path | None = None,
              on_progress: Callable[[TrainProgress], None] | None = None, reason: str = "",
              per_channel: bool = True) -> QatResult:
    """Fine-tune ``checkpoint`` with fake quantization into ``output`` (reused when it is already there).

    ``calibration``: loads the export's calibration images (preprocessed, N x C x H x W float32), on which
    the activation ranges are measured and then frozen; called only when a fine-tune runs."""
    settings.validate()
    if output.is_file():
        info = load_checkpoint(output).info
        return QatResult(output, (info.training if info else {}).get("qat", {}), reused=True)
    loaded = load_checkpoint(checkpoint)
    info = loaded.info
    if info is None:
        raise TrainingError(f"checkpoint {checkpoint} has no sidecar: QAT needs its dataset and normalisation",
                            "export with --no-qat, or fine-tune a checkpoint made by `toolchain train`")
    train_set = load_dataset(info.dataset, "train", data_dir or info.training.get("data_dir"))
    train_set = replace(train_set.sample(min(settings.images, len(train_set)), settings.seed),
                        mean=info.mean, std=info.std)
    test_set = replace(load_dataset(info.dataset, "test", data_dir or info.training.get("data_dir")).sample(
        1000, settings.seed), mean=info.mean, std=info.std)
    torch.manual_seed(settings.seed)
    sample = next(iter(iterate_batches(test_set, 2, shuffle=False)))[0]
    rescale_batchnorm_after_relu(loaded.model)
    prepared = _prepared(loaded.model, sample, weight_bits, activation_type, per_channel)
    _freeze_batchnorm(prepared)
    calibration_images = torch.from_numpy(np.ascontiguousarray(calibration(), np.float32))
    frozen = _calibrate_and_freeze_ranges(prepared, calibration_images, settings.batch_size)
    # Adam, not SGD: an ill-conditioned checkpoint (channels 10-1000x apart, what QAT is for) gives SGD steps
    # that are that many times too large for the small weights; SGD with momentum collapsed the test net's
    # fine-tune to 10 % in float where Adam's per-weight step brought INT8 from 11.7 % to 58 % (measured with
    # moving-average ranges; docs/quantization.md has the numbers with the ranges frozen)
    optimizer = torch.optim.Adam(prepared.parameters(), lr=settings.lr)
    started, history, stopped = time.perf_counter(), [], False
    batches = math.ceil(len(train_set) / settings.batch_size)
    generator = torch.Generator().manual_seed(settings.seed)
    for epoch in range(1, settings.epochs + 1):
        def report(batch: int, stats: EpochStats, epoch: int = epoch) -> None:
            if on_progress is not None:
                on_progress(TrainProgress(epoch, settings.epochs, batch, batches, stats.loss, stats.accuracy,
                                          stats.images_per_s, None, "train"))

        budget = settings.minutes * 60

        def within_budget(stream: Iterator[Any]) -> Iterator[Any]:
            """The epoch's batches until the time budget is spent (checked per batch: one epoch of a deep
            net can take longer than the whole budget; measured: 19 min for hps-21-1x-v3 on 2 cores)."""
            for batch in stream:
                if time.perf_counter() - started > budget:
                    return
                yield batch

        stats = fit_batches(prepared, optimizer, within_budget(iterate_batches(
            train_set, settings.batch_size, shuffle=True, generator=generator)), batches, epoch, report)
        history.append({"epoch": epoch, "train_loss": stats.loss, "train_acc": stats.accuracy})
        if time.perf_counter() - started > budget:
            stopped = True
            break
    _copy_back(prepared, loaded.model)
    loaded.model.eval()
    _, accuracy = evaluate_with_loss(loaded.model, test_set)
    record = {"parent": {"file": str(checkpoint), "sha256": loaded.sha256}, "settings": settings.to_dict(),
              "weight_bits": weight_bits, "activation_type": activation_type, "per_channel": per_channel,
              "library": f"torch.ao {torch.__version__}", "optimizer": "Adam",
              "activation_ranges": {"observer": "minmax", "calibration_images": len(calibration_images), "frozen": frozen},
              "epochs_run": len(history), "stopped_by_time_budget": stopped, "history": history,
              "seconds": round(time.perf_counter() - started, 2),
              "fp32_test_top1_after": accuracy.top1, "reason": reason}
    fresh = replace(info, sha256="", created="", metrics={**info.metrics, "test_top1": accuracy.top1},
                    training={**info.training, "qat": record})
    output.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(loaded.model, CheckpointInfo.from_dict(fresh.to_dict()), output)
    return QatResult(output, record, reused=False)
