"""Target profiles (targets/<name>/target.toml), ~/.ssh/config aliases and command-line overrides.

Precedence, highest first: command-line flags, the ~/.ssh/config entry of the host (HostName, User,
Port, IdentityFile, UserKnownHostsFile, ProxyJump, ProxyCommand; Include and Match honoured, see
toolchain.remote.ssh_config), the profile file. `resolve_profile` does it all once; the jump hosts
come out resolved (`jumps`), each through its own ~/.ssh/config entry. Nothing in a profile is a secret: keys stay
in their files and are referred to by path.
"""

from __future__ import annotations

import contextvars
import dataclasses
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from toolchain.bench.settings import BenchDefaults
from toolchain.errors import TargetConfigError
from toolchain.remote.ssh_config import JumpHost, jump_hosts, lookup, read_ssh_config
from toolchain.transport import LocalTransport, SSHSettings, SSHTransport, Transport

if TYPE_CHECKING:
    import paramiko

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# `--host X` alone: any Linux box (arch and Python taken from its preflight); bluebox2 checks and pins more
DEFAULT_TARGET = "linux"
# `arch = "auto"`: whatever the preflight finds (the generic linux profile)
ANY_ARCH = "auto"
LOCAL_HOST = "local"
PROFILE_FILE = "target.toml"
_REPO_TARGETS = Path(__file__).resolve().parents[2] / "targets"
_VERSION = re.compile(r"^(newest|\d+(\.\d+)*)$")


@dataclass(frozen=True)
class EmulationSettings:
    """For the emulated Bluebox: which local instance provides host, keys and known_hosts."""

    instance: str = "bluebox"
    subnet: str = "10.200.0"


@dataclass(frozen=True)
class TargetProfile:
    """One target: how to reach it, what it must be, which runtime it gets, how to benchmark on it."""

    name: str
    source: Path | None = None
    description: str = ""
    emulated: bool = False
    # [connection]
    host: str | None = None
    port: int = 22
    user: str | None = None
    identity_file: Path | None = None
    known_hosts: Path = Path("~/.ssh/known_hosts")
    ssh_config: Path | None = Path("~/.ssh/config")
    use_agent: bool = True
    connect_timeout: float = 10.0
    command_timeout: float = 300.0
    keepalive: float = 15.0
    keepalive_count: int = 3
    stall_timeout: float = 30.0
    proxy_jump: str | None = None
    proxy_command: str | None = None
    #: the ProxyJump hops, outermost first, as resolve_profile found them (not read from the file)
    jumps: tuple[JumpHost, ...] = ()
    # [target]
    arch: str = "aarch64"
    cores: int | None = None
    cpu: str | None = None
    # the CPU's spec, for a peak GFLOP/s where none is measured there: clock and float32 FLOPs per cycle per core
    clock_ghz: float | None = None
    fp32_flops_per_cycle: int | None = None
    # the memory system's peak bandwidth in GB/s, for a roofline's sloped ceiling where none is measured there
    memory_gbps: float | None = None
    # the interpreter in use: the first of `python_search` that the target has (the preflight decides)
    python: str = "python3"
    python_search: tuple[str, ...] = ()
    workdir: str = "~/toolchain"
    min_free_mb: int = 16
    # [runtime]: a version pins it, "newest" takes the newest wheel that fits the target
    onnxruntime: str = "newest"
    numpy: str = "newest"
    bench: BenchDefaults = field(default_factory=BenchDefaults)
    emulation: EmulationSettings | None = None

    @property
    def is_local(self) -> bool:
        return self.host == LOCAL_HOST

    @property
    def address(self) -> str:
        if self.is_local:
            return LOCAL_HOST
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    @property
    def pythons(self) -> tuple[str, ...]:
        """The interpreters to try on the target, in order."""
        return self.python_search or (self.python,)

    def with_overrides(self, **values: Any) -> "TargetProfile":
        """A copy with the given fields replaced; None means "not given" and keeps the current value.

        A `python` given alone replaces the profile's search list too.
        """
        given = {key: value for key, value in values.items() if value is not None}
        if "python" in given:
            given.setdefault("python_search", ())
        unknown = set(given) - {item.name for item in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown profile fields: {sorted(unknown)}")
        return dataclasses.replace(self, **given)

    def to_dict(self) -> dict[str, Any]:
        """For JSON output (nothing secret is in a profile)."""
        return dataclasses.asdict(self)


# fills in how to reach a profile's target (toolchain.providers)
Provider = Callable[[TargetProfile], TargetProfile]


# --- reading target.toml ----------------------------------------------------------------------

_SECTIONS: dict[str | None, dict[str, type | tuple[type, ...]]] = {
    None: {"name": str, "description": str, "emulated": bool},
    "connection": {"host": str, "port": int, "user": str, "identity_file": str, "known_hosts": str,
                   "ssh_config": str, "use_agent": bool, "connect_timeout": (int, float),
                   "command_timeout": (int, float), "keepalive": (int, float), "keepalive_count": int,
                   "stall_timeout": (int, float), "proxy_jump": str, "proxy_command": str},
    "target": {"arch": str, "cores": int, "cpu": str, "python": (str, list), "workdir": str, "min_free_mb": int,
               "clock_ghz": (int, float), "fp32_flops_per_cycle": int, "memory_gbps": (int, float)},
    "runtime": {"onnxruntime": str, "numpy": str},
    "bench": {"threads": list, "batch": int, "warmup": int, "runs": int, "min_time": (int, float),
              "timeout": (int, float)},
    "emulation": {"instance": str, "subnet": str},
}
_PATH_FIELDS = {"identity_file", "known_hosts", "ssh_config"}


def _section_values(path: Path, document: dict[str, Any], section: str | None) -> dict[str, Any]:
    table = document if section is None else document.get(section, {})
    where = f"[{section}]" if section else "the top level"
    if not isinstance(table, dict):
        raise TargetConfigError(f"{path}: {section} must be a table", f"write it as [{section}]")
    allowed = _SECTIONS[section]
    values: dict[str, Any] = {}
    for key, value in table.items():
        if section is None and key in _SECTIONS:
            continue
        if key not in allowed:
            raise TargetConfigError(f"{path}: unknown key {key!r} in {where}",
                                    f"known keys there: {', '.join(sorted(allowed))}")
        expected = allowed[key]
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise TargetConfigError(f"{path}: {key} in {where} has the wrong type ({type(value).__name__})",
                                    "see targets/bluebox2/target.toml for an example of every key")
        if key in _PATH_FIELDS:
            value = Path(value).expanduser() if value else None  # "" switches a file off (ssh_config)
            if value is not None and not value.is_absolute() and not str(table[key]).startswith("~"):
                value = path.parent / value  # relative to the profile's folder
        values[key] = value
    return values


def parse_profile(path: Path, text: str) -> TargetProfile:
    """A profile from the text of a target.toml (`path` is for messages and relative key paths)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TargetConfigError(f"{path} is not valid TOML: {exc}", "fix the syntax (see targets/bluebox2)") \
            from None
    unknown_tables = {key for key, value in document.items() if isinstance(value, dict)} - set(_SECTIONS)
    if unknown_tables:
        raise TargetConfigError(f"{path}: unknown table [{sorted(unknown_tables)[0]}]",
                                f"known tables: {', '.join(sorted(key for key in _SECTIONS if key))}")
    values: dict[str, Any] = {}
    for section in ("connection", "target", "runtime", None):
        values.update(_section_values(path, document, section))
    bench = _section_values(path, document, "bench")
    if "threads" in bench:
        threads = bench["threads"]
        if not threads or not all(isinstance(item, int) and not isinstance(item, bool) and item > 0
                                  for item in threads):
            raise TargetConfigError(f"{path}: bench threads must be a list of positive integers",
                                    "e.g. threads = [1, 2, 4, 8]")
        bench["threads"] = tuple(threads)
    if "min_time" in bench:
        bench["min_time_s"] = float(bench.pop("min_time"))
    if "emulation" in document:
        values["emulation"] = EmulationSettings(**_section_values(path, document, "emulation"))
    if isinstance(values.get("python"), list):
        values["python_search"] = _python_search(path, values["python"])
        values["python"] = values["python_search"][0]
    for key in ("onnxruntime", "numpy"):
        if key in values and not _VERSION.match(values[key]):
            raise TargetConfigError(f"{path}: {key} = {values[key]!r} is not a version",
                                    'write a version like "1.16.3", or "newest"')
    values.setdefault("name", path.parent.name if path.name == PROFILE_FILE else path.stem)
    return TargetProfile(source=path, bench=BenchDefaults(**bench), **values)


def _python_search(path: Path, candidates: list[Any]) -> tuple[str, ...]:
    if not candidates or not all(isinstance(item, str) and item for item in candidates):
        raise TargetConfigError(f"{path}: python must be a path or a non-empty list of paths",
                                'e.g. python = ["/opt/python3.11/bin/python3", "python3"]')
    return tuple(candidates)


def profile_path(reference: str | Path | None) -> Path:
    """The target.toml a `--target` value names: a file, a folder holding one, or a name under targets/."""
    reference = DEFAULT_TARGET if reference is None else reference
    candidate = Path(reference).expanduser()
    if candidate.is_file():
        return candidate
    if (candidate / PROFILE_FILE).is_file():
        return candidate / PROFILE_FILE
    if not isinstance(reference, Path) and "/" not in str(reference) and not str(reference).endswith(".toml"):
        for root in (Path.cwd() / "targets", _REPO_TARGETS):
            if (root / str(reference) / PROFILE_FILE).is_file():
                return root / str(reference) / PROFILE_FILE
    known = sorted({path.parent.name for root in (Path.cwd() / "targets", _REPO_TARGETS)
                    for path in root.glob(f"*/{PROFILE_FILE}")})
    raise TargetConfigError(f"no target profile {reference}",
                            f"pass --target with a target.toml path or one of: {', '.join(known) or 'none found'}")


def load_profile(reference: str | Path | None = None) -> TargetProfile:
    """Read and validate a target profile (see `profile_path` for what `reference` may be)."""
    path = profile_path(reference)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TargetConfigError(f"cannot read {path}: {exc.strerror}", "check the path and its permissions") \
            from None
    return parse_profile(path, text)


def _ssh_config(profile: TargetProfile) -> tuple["paramiko.SSHConfig | None", Path | None]:
    """The profile's ~/.ssh/config, parsed (None where it has none or the target is this machine)."""
    if profile.is_local or not profile.host or profile.ssh_config is None:
        return None, None
    path = profile.ssh_config.expanduser()
    return (read_ssh_config(path), path) if path.is_file() else (None, None)


def apply_ssh_config(profile: TargetProfile, config: "paramiko.SSHConfig | None" = None,
                     path: Path | None = None) -> TargetProfile:
    """Honour the ~/.ssh/config entry for the profile's host (HostName, User, Port, IdentityFile,
    UserKnownHostsFile, ProxyJump, ProxyCommand); `config` and `path`: the file already read."""
    if config is None:
        config, path = _ssh_config(profile)
    if config is None or path is None or not profile.host:
        return profile
    entry = lookup(config, profile.host, path)
    return profile.with_overrides(host=entry.hostname, user=entry.user, port=entry.port,
                                  identity_file=entry.identity_file, known_hosts=entry.known_hosts,
                                  proxy_jump=entry.proxy_jump, proxy_command=entry.proxy_command)


def _expand_tokens(command: str, profile: TargetProfile) -> str:
    """OpenSSH's %h, %p, %r and %% in a ProxyCommand given in the profile or by flag."""
    values = {"h": profile.host or "", "p": str(profile.port), "r": profile.user or "", "%": "%"}
    return re.sub(r"%([hpr%])", lambda match: values[match.group(1)], command)


def with_route(profile: TargetProfile, config: "paramiko.SSHConfig | None", path: Path | None) -> TargetProfile:
    """The profile with its ProxyJump hops resolved (`jumps`) and its ProxyCommand's tokens expanded."""
    jump = profile.proxy_jump if profile.proxy_jump and profile.proxy_jump.lower() != "none" else None
    command = profile.proxy_command if profile.proxy_command and profile.proxy_command.lower() != "none" else None
    jumps = jump_hosts(jump, config, path, profile.identity_file) if jump and not profile.is_local else ()
    return dataclasses.replace(profile, proxy_jump=jump, jumps=jumps,
                               proxy_command=_expand_tokens(command, profile) if command else None)


def resolve_profile(reference: str | Path | None = None, *, host: str | None = None,
                    provider: Provider | None = None, **overrides: Any) -> TargetProfile:
    """The profile a command runs with: file, then its provider, then ~/.ssh/config for the host, then flags.

    `provider` (toolchain.providers.provide for the CLI) fills in how to reach a target that something on
    this machine provides, such as the emulated Bluebox; a --host of its own skips it. ~/.ssh/config is
    read once, for the host and for its jump hosts.
    """
    profile = load_profile(reference)
    if provider is not None and host is None:
        profile = provider(profile)
    if host is not None:
        profile = profile.with_overrides(host=host)
    config, path = _ssh_config(profile)
    profile = apply_ssh_config(profile, config, path).with_overrides(**overrides)
    if not profile.host:
        raise TargetConfigError(f"no host for target {profile.name}",
                                "pass --host (an address or a ~/.ssh/config alias) or set host in the profile")
    return with_route(profile, config, path)


# who is told of each transport opened in this context (a fleet run, to close them all on Ctrl-C)
_transport_watch: contextvars.ContextVar[Callable[[Transport], None] | None] = contextvars.ContextVar(
    "transport_watch", default=None)


@contextmanager
def watching_transports(on_open: Callable[[Transport], None]) -> Iterator[None]:
    """Within the block (in this thread's context), `on_open` receives every transport `open_transport` makes;
    it may raise to refuse one (a run being interrupted)."""
    token = _transport_watch.set(on_open)
    try:
        yield
    finally:
        _transport_watch.reset(token)


def open_transport(profile: TargetProfile, *, accept_new_host_key: bool = False) -> Transport:
    """The transport for a resolved profile (nothing connects until the first command).

    Jump hosts are checked like the target: the same known_hosts file, the same accept-new choice.
    """
    transport = _new_transport(profile, accept_new_host_key)
    watch = _transport_watch.get()
    if watch is not None:
        watch(transport)
    return transport


def _new_transport(profile: TargetProfile, accept_new_host_key: bool) -> Transport:
    if profile.is_local:
        return LocalTransport()
    common = dict(known_hosts=profile.known_hosts, accept_new_host_key=accept_new_host_key,
                  use_agent=profile.use_agent, connect_timeout=profile.connect_timeout,
                  keepalive_s=profile.keepalive, keepalive_count=profile.keepalive_count,
                  stall_timeout=profile.stall_timeout)
    jumps = tuple(SSHSettings(host=hop.host, port=hop.port, user=hop.user, identity_file=hop.identity_file, **common)
                  for hop in profile.jumps)
    return SSHTransport(SSHSettings(host=profile.host or "", port=profile.port, user=profile.user,
                                    identity_file=profile.identity_file, jumps=jumps,
                                    proxy_command=profile.proxy_command, **common))
