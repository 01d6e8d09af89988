"""Options shared by several commands, declared once as Annotated aliases (and the connection options once
for every command that connects, through `connects`)."""

from __future__ import annotations

import functools
import inspect
import shlex
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from toolchain.errors import HostKeyUnknownError

if TYPE_CHECKING:
    from toolchain.remote.target import TargetProfile

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

# --- connection options (deploy, bench, target check, target bench) -----------------------------
TargetOption = Annotated[Optional[str], typer.Option(
    "--target", "-t", help="Target profile: a name under targets/ (linux, bluebox2, emulated) or a target.toml "
    "path (default: linux, any Linux box: arch and Python from its preflight).", envvar="TOOLCHAIN_TARGET")]
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
WorkdirOption = Annotated[Optional[str], typer.Option("--workdir", help="Work folder on the target.")]
PythonOption = Annotated[Optional[str], typer.Option(
    "--python", help="Python interpreter on the target (replaces the profile's search list).")]
JumpOption = Annotated[Optional[str], typer.Option(
    "--jump", "-J", help="Jump host(s) to reach the target through, like ssh -J: [user@]host[:port][,...], each "
    "looked up in ~/.ssh/config ('none': connect directly; default: the ProxyJump of ~/.ssh/config or the profile).")]
BreakLockOption = Annotated[bool, typer.Option(
    "--break-lock", help="Stop the run that holds the target's lock (the error names it, e.g. a stale one whose "
    "link is gone) and take the lock; for the commands that take it (deploy, bench).")]
AcceptNewHostKeyOption = Annotated[bool, typer.Option(
    "--accept-new-host-key", help="Trust and record the target's host key if known_hosts has none for it "
    "(like OpenSSH's accept-new); a changed key is still refused.")]


@dataclass(frozen=True)
class Connection:
    """The connection options of one command line, resolved into a profile in one place."""

    target: str | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None
    identity_file: Path | None = None
    known_hosts: Path | None = None
    jump: str | None = None
    accept_new_host_key: bool = False
    break_lock: bool = False

    def profile(self, **overrides: Any) -> "TargetProfile":
        """The profile file (or its provider), ~/.ssh/config, then these flags and `overrides` (None: not given).

        Resolved once, here: the result names the host, the login and the route (ProxyJump hops, each
        through its own ~/.ssh/config entry, or a ProxyCommand) that every step of the command uses.
        """
        from toolchain.providers import resolve_profile

        return resolve_profile(self.target, host=self.host, port=self.port, user=self.user,
                               identity_file=self.identity_file, known_hosts=self.known_hosts,
                               proxy_jump=self.jump, **overrides)


_CONNECTION_OPTIONS: dict[str, Any] = {
    "target": TargetOption, "host": HostOption, "port": PortOption, "user": UserOption,
    "identity_file": IdentityFileOption, "known_hosts": KnownHostsOption, "jump": JumpOption,
    "accept_new_host_key": AcceptNewHostKeyOption, "break_lock": BreakLockOption}


def with_accept_hint(error: HostKeyUnknownError) -> HostKeyUnknownError:
    """The hint with the exact command line that trusts the key (this command + --accept-new-host-key)."""
    if Path(sys.argv[0]).name == "toolchain":
        command = shlex.join(["toolchain", *sys.argv[1:], "--accept-new-host-key"])
        hint = (error.hint or "").split("; if it matches")[0]
        return HostKeyUnknownError(error.message, f"{hint}; if it matches, trust it: {command}")
    return error


def connects(target_option: Any = TargetOption,
             target_default: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the connection options; it receives them as one `connection: Connection` argument.

    An unknown host key ends with a hint naming the command line that trusts it. `target_option` and
    `target_default` let a command give --target its own meaning (`toolchain bench`: 'local').
    """
    annotations = {**_CONNECTION_OPTIONS, "target": target_option}
    defaults = {**{item.name: item.default for item in fields(Connection)}, "target": target_default}

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        own = [parameter for name, parameter in signature.parameters.items() if name != "connection"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                   default=defaults[name]) for name, annotation in annotations.items()]

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            connection = Connection(**{name: values.pop(name) for name in annotations})
            try:
                return command(connection=connection, **values)
            except HostKeyUnknownError as error:
                raise with_accept_hint(error) from None

        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*own, *added], return_annotation=signature.return_annotation)
        return run

    return decorate
