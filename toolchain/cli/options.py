"""Options shared by several commands, declared once as Annotated aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
_MODEL = typer.Option("--model", "-m", help="Model name, e.g. hps-06-0.5x (see `toolchain models`).")
_DATASET = typer.Option("--dataset", "-d", help="fashion-mnist, cifar10, cifar100, cifar100-coarse, "
                        "imagefolder or synthetic.")
ModelOption = Annotated[str, _MODEL]
DatasetOption = Annotated[str, _DATASET]
# The same options where a command can take the value from elsewhere (a checkpoint's sidecar).
OptionalModelOption = Annotated[Optional[str], _MODEL]
OptionalDatasetOption = Annotated[Optional[str], _DATASET]
DataDirOption = Annotated[Optional[Path], typer.Option(
    "--data-dir", help="Dataset folder (default for fashion-mnist: Debian's "
    "/usr/share/datasets/fashion-mnist).")]
CheckpointOption = Annotated[Optional[Path], typer.Option(
    "--checkpoint", "-c", help="A state_dict checkpoint (.pt) from `toolchain train` or elsewhere.")]
ArtifactsOption = Annotated[Path, typer.Option(
    "--artifacts", help="Artifact store folder.", envvar="TOOLCHAIN_ARTIFACTS")]
ThreadsOption = Annotated[Optional[int], typer.Option(
    "--threads", help="Intra-op threads (default: the library's own choice).", min=1)]
DEFAULT_ARTIFACTS = Path("artifacts")
