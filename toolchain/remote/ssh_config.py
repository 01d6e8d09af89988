"""~/.ssh/config as OpenSSH reads it, through paramiko's SSHConfig: Host and Match blocks, wildcards, tokens,
and `Include` (which paramiko lacks: expanded here, with OpenSSH's rules for relative paths and globs).

What a target profile takes from an entry: HostName, User, Port, IdentityFile, UserKnownHostsFile,
ProxyJump and ProxyCommand; jump hosts are looked up in the same file, hop by hop, so a bastion's own
entry (its User, IdentityFile, its own ProxyJump) applies as it does for `ssh -J`.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from toolchain.errors import TargetConfigError

if TYPE_CHECKING:
    import paramiko

# OpenSSH's limit on Include depth; also bounds a ProxyJump chain that leads back to itself
MAX_DEPTH = 16
_INCLUDE = re.compile(r"^\s*include\s*(?:=\s*|\s)(.+)$", re.IGNORECASE)
_JUMP = re.compile(r"^(?:ssh://)?(?:(?P<user>[^@/\s]+)@)?(?P<host>\[[^\]\s]+\]|[^:/@\s]+)(?::(?P<port>\d+))?/?$")


@dataclass(frozen=True)
class HostEntry:
    """What ~/.ssh/config says about one host alias (None: the file does not say)."""

    hostname: str | None = None
    user: str | None = None
    port: int | None = None
    identity_file: Path | None = None
    known_hosts: Path | None = None
    proxy_jump: str | None = None
    proxy_command: str | None = None


@dataclass(frozen=True)
class JumpHost:
    """One ProxyJump hop, resolved: where it is and how to log in there."""

    host: str
    port: int = 22
    user: str | None = None
    identity_file: Path | None = None


def _expanded(path: Path, depth: int = 0) -> Iterator[str]:
    """The lines of `path` with every Include replaced by the files it names (relative: to ~/.ssh)."""
    if depth > MAX_DEPTH:
        raise TargetConfigError(f"{path}: Include nested deeper than {MAX_DEPTH} levels",
                                "an Include in ~/.ssh/config includes itself; fix the Include lines")
    for line in path.read_text().splitlines():
        match = _INCLUDE.match(line)
        if not match:
            yield line
            continue
        for pattern in shlex.split(match.group(1)):
            pattern = os.path.expanduser(pattern)
            if not os.path.isabs(pattern):
                pattern = os.path.join(os.path.expanduser("~/.ssh"), pattern)
            for included in sorted(glob.glob(pattern)):
                yield from _expanded(Path(included), depth + 1)


def read_ssh_config(path: Path) -> "paramiko.SSHConfig":
    """The parsed file, Includes expanded."""
    import paramiko

    try:
        return paramiko.SSHConfig.from_text("\n".join(_expanded(path)))
    except (OSError, UnicodeDecodeError, paramiko.ssh_exception.ConfigParseError) as exc:
        raise TargetConfigError(f"cannot read {path}: {exc}", "fix the file or set ssh_config = \"\"") from None


def lookup(config: "paramiko.SSHConfig", alias: str, path: Path) -> HostEntry:
    """The entry for `alias` (Host and Match blocks, first value wins, as in OpenSSH)."""
    try:
        entry = config.lookup(alias)
    except Exception as exc:  # paramiko raises ConfigParseError, or a token/Match error of its own
        raise TargetConfigError(f"{path}: cannot look up host {alias}: {exc}", "fix the file's Host/Match blocks") \
            from None
    port = entry.get("port")
    if port is not None and not str(port).isdigit():
        raise TargetConfigError(f"{path}: Port {port!r} of host {alias} is not a number", "fix the Port line")
    identity = entry.get("identityfile") or []
    known_hosts = entry.get("userknownhostsfile")
    jump = entry.get("proxyjump")
    command = entry.get("proxycommand")
    return HostEntry(hostname=entry.get("hostname"), user=entry.get("user"), port=int(port) if port else None,
                     identity_file=Path(identity[0]).expanduser() if identity else None,
                     known_hosts=Path(known_hosts.split()[0]).expanduser() if known_hosts else None,
                     proxy_jump=None if not jump or jump.lower() == "none" else jump,
                     proxy_command=None if not command or command.lower() == "none" else command)


def parse_jump(spec: str) -> tuple[str | None, str, int | None]:
    """`[user@]host[:port]` or `ssh://[user@]host[:port]` as (user, host, port)."""
    match = _JUMP.match(spec.strip())
    if not match:
        raise TargetConfigError(f"ProxyJump hop {spec!r} is not [user@]host[:port]",
                                "fix the ProxyJump line (~/.ssh/config), proxy_jump (profile) or --jump")
    port = match.group("port")
    return match.group("user"), match.group("host").strip("[]"), int(port) if port else None


def jump_hosts(spec: str, config: "paramiko.SSHConfig | None", path: Path | None,
               identity_file: Path | None, depth: int = 0) -> tuple[JumpHost, ...]:
    """The hops of a ProxyJump value, outermost first; each hop's own config entry applies, its ProxyJump too."""
    if depth > MAX_DEPTH:
        raise TargetConfigError(f"ProxyJump {spec} leads back to itself (more than {MAX_DEPTH} hops)",
                                "exclude the jump host from the Host block that sets ProxyJump (Host * !bastion)")
    hops: list[JumpHost] = []
    for item in spec.split(","):
        user, alias, port = parse_jump(item)
        entry = lookup(config, alias, path) if config is not None and path is not None else HostEntry()
        if entry.proxy_jump:
            hops += jump_hosts(entry.proxy_jump, config, path, identity_file, depth + 1)
        hops.append(JumpHost(host=entry.hostname or alias, port=port or entry.port or 22, user=user or entry.user,
                             identity_file=entry.identity_file or identity_file))
    return tuple(hops)
