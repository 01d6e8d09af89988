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

# --- target options (deploy, bench --host, target check) ----------------------------------------
TargetOption = Annotated[Optional[str], typer.Option(
    "--target", "-t", help="Target profile: a name under targets/ (bluebox2, emulated) or a target.toml path "
    "(default: bluebox2).", envvar="TOOLCHAIN_TARGET")]
HostOption = Annotated[Optional[str], typer.Option(
    "--host", help="Target address or ~/.ssh/config alias (overrides the profile; 'local': this machine, "
    "for a profile whose arch matches it).")]
PortOption = Annotated[Optional[int], typer.Option("--port", help="SSH port (overrides the profile).",
                                                   min=1, max=65535)]
UserOption = Annotated[Optional[str], typer.Option("--user", help="Login user on the target.")]
IdentityFileOption = Annotated[Optional[Path], typer.Option(
    "--identity-file", "-i", help="Private key file to log in with (no passwords, ever).")]
KnownHostsOption = Annotated[Optional[Path], typer.Option(
    "--known-hosts", help="known_hosts file the target's host key is checked against.")]
AcceptNewHostKeyOption = Annotated[bool, typer.Option(
    "--accept-new-host-key", help="Trust and record the target's host key if known_hosts has none for it "
    "(like OpenSSH's accept-new); a changed key is still refused.")]
