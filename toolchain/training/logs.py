"""What a training run writes for people: metrics.csv (one row per epoch) and curves.png."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from toolchain.training.loop import EpochMetrics


def metrics_csv(history: list["EpochMetrics"], top5: bool) -> bytes:
    columns = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_top1"]
    columns += ["test_top5"] if top5 else []
    columns += ["seconds", "images_per_s"]
    # several processes: how many, and each one's own images/s by rank ("612.3 598.1"); 1 and empty for
    # the epochs a resumed run trained on one process
    distributed = any(row.process_images_per_s for row in history)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns + (["processes", "process_images_per_s"] if distributed else []))
    for row in history:
        values = asdict(row)
        cells = ([values["epoch"], f"{values['lr']:.6g}"] + [f"{values[c]:.4f}" for c in columns[2:-2]]
                 + [f"{values['seconds']:.2f}", f"{values['images_per_s']:.1f}"])
        if distributed:
            rates = row.process_images_per_s or ()
            cells += [len(rates) or 1, " ".join(f"{rate:.1f}" for rate in rates)]
        writer.writerow(cells)
    return text.getvalue().encode()


def curves_png(history: list["EpochMetrics"], title: str) -> bytes:
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    epochs = [m.epoch for m in history]
    figure = Figure(figsize=(10, 4), dpi=100, layout="tight")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [m.train_loss for m in history], marker=".", label="train")
    loss_axes.plot(epochs, [m.test_loss for m in history], marker=".", label="test")
    loss_axes.set(title=f"{title}: loss", xlabel="epoch", ylabel="cross-entropy")
    accuracy_axes.plot(epochs, [m.train_acc for m in history], marker=".", label="train")
    accuracy_axes.plot(epochs, [m.test_top1 for m in history], marker=".", label="test top-1")
    if history[-1].test_top5 is not None:
        accuracy_axes.plot(epochs, [m.test_top5 for m in history], marker=".", label="test top-5")
    accuracy_axes.set(title=f"{title}: accuracy", xlabel="epoch", ylabel="%")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
