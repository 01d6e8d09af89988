"""`toolchain models`: the zoo with parameters, MACs, measured and paper sizes.

Heavy libraries (torch) are imported inside the command, so `toolchain --help` stays fast.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from toolchain.cli.options import JsonOption
from toolchain.cli.output import emit_json, info, table
from toolchain.errors import UnknownModelError


def _dataset_classes(dataset: str) -> int:
    return 100 if dataset == "cifar100" else 10


def models(
    pattern: Annotated[Optional[str], typer.Argument(help="Shell-style name pattern, e.g. 'hps-*'.")] = None,
    classes: Annotated[int, typer.Option("--classes", help="Classes of the classifier.")] = 10,
    in_channels: Annotated[int, typer.Option("--in-channels", help="Input channels.")] = 3,
    json_output: JsonOption = False,
) -> None:
    """List the model zoo: depth, width, parameters, MACs, paper-style size beside the paper's."""
    from toolchain.models import count_macs, count_parameters, list_models, state_dict_bytes
    from toolchain.models.registry import BN_FIRST_NOTE

    specs = list_models(pattern or "*")
    if not specs:
        raise UnknownModelError(f"no model matches {pattern!r}", "try `toolchain models` without a pattern")
    records = []
    for spec in specs:
        model = spec.build(num_classes=classes, in_channels=in_channels)
        paper = spec.paper_results
        records.append({
            "name": spec.name, "family": spec.family,
            "depth": list(spec.depth) if spec.depth else None, "layers": spec.layers,
            "width": spec.width, "version": spec.version, "input_size": spec.input_size, "bn_first": spec.bn_first,
            "classes": classes, "in_channels": in_channels,
            "parameters": count_parameters(model),
            "macs": count_macs(model, (1, in_channels, spec.input_size, spec.input_size)),
            "size_mb": round(state_dict_bytes(model) / 1e6, 3),
            "size_mb_legacy_format": round(state_dict_bytes(model, legacy_format=True) / 1e6, 3),
            "paper": [vars(r) for r in paper],
        })
    if json_output:
        emit_json(records)
        return
    rows = []
    for r in records:
        same_classes = [p for p in r["paper"] if _dataset_classes(p["dataset"]) == classes]
        first = (same_classes or r["paper"] or [None])[0]
        rows.append((r["name"], " ".join(map(str, r["depth"])) if r["depth"] else "-",
                     r["width"] if r["width"] is not None else "-", f"{r['parameters']:,}",
                     f"{r['macs'] / 1e6:.1f}", f"{r['size_mb']:.3f}",
                     f"{first['size_mb']:.3f}" if first else "-",
                     f"{first['accuracy_pct']:.2f}" if first else "-",
                     f"{first['dataset']} {first['table']}" if first else ""))
    table(f"{len(records)} models ({classes} classes, {in_channels} input channels; "
          "size = torch.save(state_dict) file)",
          ["name", "depth", "width", "params", "MMACs", "size MB", "paper MB", "paper acc %", "paper"],
          rows, right_align=["params", "MMACs", "size MB", "paper MB", "paper acc %"])
    if any(spec.bn_first for spec in specs):
        info(BN_FIRST_NOTE.strip())
