"""Opening an SSH connection: directly, through a ProxyCommand, or through a chain of jump hosts.

Every hop is checked like the target itself: its host key against the same known_hosts file (unknown:
refused with its fingerprint unless `accept_new_host_key`; changed: always refused), key login only.
Each failure becomes one typed error that names the hop it happened on.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain.errors import (AuthenticationFailedError, HostKeyMismatchError, HostKeyUnknownError,
                              HostUnreachableError, TargetConfigError, TransportError)
from toolchain.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    import paramiko

# paramiko logs every failure of its reader thread with a traceback on stderr; each one reaches the user
# as a typed error instead, so its log stays quiet.
_PARAMIKO_LOG = logging.getLogger("paramiko")
_PARAMIKO_LOG.addHandler(logging.NullHandler())
_PARAMIKO_LOG.propagate = False


@dataclass(frozen=True)
class SSHSettings:
    """Everything needed to reach one target over SSH (no secrets: keys stay in their files).

    `jumps` are the ProxyJump hosts, outermost first (each a complete SSHSettings of its own);
    `proxy_command` is a local command whose stdin/stdout is the connection (OpenSSH's ProxyCommand).
    """

    host: str
    port: int = 22
    user: str | None = None
    identity_file: Path | None = None
    known_hosts: Path = Path("~/.ssh/known_hosts")
    accept_new_host_key: bool = False
    use_agent: bool = True
    connect_timeout: float = 10.0
    keepalive_s: float = 15.0
    keepalive_count: int = 3
    stall_timeout: float = 30.0
    connect_attempts: int = 3
    retry_backoff_s: float = 0.5
    jumps: tuple["SSHSettings", ...] = ()
    proxy_command: str | None = None

    @property
    def known_hosts_name(self) -> str:
        """The host's name as known_hosts stores it (OpenSSH writes `[host]:port` for other ports)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    @property
    def route(self) -> str:
        """How the connection goes, for messages: ` via jump a:22, b:22` or ` via ProxyCommand`."""
        if self.jumps:
            return " via jump host " + ", ".join(hop.address for hop in self.jumps)
        return " via its ProxyCommand" if self.proxy_command else ""


def known_hosts_path(settings: SSHSettings) -> Path:
    return settings.known_hosts.expanduser()


def _append_known_host(path: Path, name: str, key: "paramiko.PKey") -> None:
    """Add one `name keytype base64` line to known_hosts, written atomically, mode 600."""
    existing = path.read_bytes() if path.is_file() else b""
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_bytes(path, existing + f"{name} {key.get_name()} {key.get_base64()}\n".encode())
    os.chmod(path, 0o600)


def _host_key_policy(settings: SSHSettings, accepted: list[str]) -> "paramiko.MissingHostKeyPolicy":
    import paramiko

    class RefuseOrAcceptNew(paramiko.MissingHostKeyPolicy):
        """Unknown host key: refuse with its fingerprint, or (explicit opt-in) trust and record it."""

        def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
            known_hosts = known_hosts_path(settings)
            if not settings.accept_new_host_key:
                key_file = f"/etc/ssh/ssh_host_{key.get_name().removeprefix('ssh-').split('-')[0]}_key.pub"
                raise HostKeyUnknownError(
                    f"the host key of {hostname} is not in {known_hosts}: {key.get_name()} {key.fingerprint}",
                    f"check it on the target (ssh-keygen -lf {key_file}); if it matches, rerun with "
                    f"--accept-new-host-key to add it to {known_hosts}")
            _append_known_host(known_hosts, hostname, key)
            client.get_host_keys().add(hostname, key.get_name(), key)
            accepted.append(f"{key.get_name()} {key.fingerprint}")

    return RefuseOrAcceptNew()


def is_transient(exc: BaseException) -> bool:
    """Handshake resets and missing banners pass; refusals, bad keys and failed logins do not."""
    import paramiko

    if isinstance(exc, (paramiko.AuthenticationException, paramiko.BadHostKeyException)):
        return False
    if isinstance(exc, (ConnectionResetError, EOFError)):
        return True
    return isinstance(exc, paramiko.SSHException) and (
        "banner" in str(exc).lower() or "reset" in str(exc).lower() or "closed" in str(exc).lower())


def _unreachable(settings: SSHSettings, exc: OSError) -> HostUnreachableError:
    where = f"{settings.host}:{settings.port}"
    if isinstance(exc, socket.gaierror):
        return HostUnreachableError(f"cannot resolve {settings.host}: {exc.strerror}",
                                    "check the host name (target profile, --host or ~/.ssh/config)")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return HostUnreachableError(f"cannot reach {where}: no answer within {settings.connect_timeout:g} s",
                                    "check that the target is on and on this network (ping it)")
    if exc.errno == errno.ECONNREFUSED:
        return HostUnreachableError(f"cannot reach {where}: connection refused",
                                    "check that sshd runs on the target and the port is right (--port)")
    return HostUnreachableError(f"cannot reach {where}: {exc.strerror or exc}",
                                "check the address and the network route to the target")


def first_socket(settings: SSHSettings) -> Any:
    """The byte stream to the first hop: a TCP socket, or the ProxyCommand's stdin/stdout."""
    import paramiko

    if settings.proxy_command and not settings.jumps:
        try:
            proxy = paramiko.ProxyCommand(settings.proxy_command)
        except paramiko.ProxyCommandFailure as exc:
            raise HostUnreachableError(f"the ProxyCommand for {settings.host} did not start: {exc.error}",
                                       "fix the ProxyCommand line in ~/.ssh/config") from None
        proxy.settimeout(settings.connect_timeout)
        return proxy
    first = settings.jumps[0] if settings.jumps else settings
    try:
        return socket.create_connection((first.host, first.port), timeout=first.connect_timeout)
    except ConnectionResetError:
        raise  # accepted and reset at once (an overloaded server or a flaky link): worth a retry
    except OSError as exc:
        raise _unreachable(first, exc) from None


def forward(client: "paramiko.SSHClient", hop: SSHSettings, to: SSHSettings) -> "paramiko.Channel":
    """A direct-tcpip channel from the jump host `hop` to the next hop `to` (the socket for its handshake)."""
    import paramiko

    transport = client.get_transport()
    assert transport is not None
    try:
        return transport.open_channel("direct-tcpip", (to.host, to.port), ("127.0.0.1", 0),
                                      timeout=to.connect_timeout)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise HostUnreachableError(f"jump host {hop.address} cannot reach {to.host}:{to.port}: {exc}",
                                   "check the address as the jump host sees it, and that its sshd allows "
                                   "forwarding (AllowTcpForwarding)") from None


def login(settings: SSHSettings, sock: Any, accepted: list[str]) -> "paramiko.SSHClient":
    """SSH handshake, strict host key check and key login to one hop over `sock`."""
    import paramiko

    client = paramiko.SSHClient()
    known_hosts = known_hosts_path(settings)
    try:
        if known_hosts.is_file():
            client.load_host_keys(str(known_hosts))
        client.set_missing_host_key_policy(_host_key_policy(settings, accepted))
        client.connect(settings.host, port=settings.port, username=settings.user, password=None,
                       key_filename=str(settings.identity_file.expanduser()) if settings.identity_file else None,
                       allow_agent=settings.use_agent, look_for_keys=False, sock=sock,
                       timeout=settings.connect_timeout, banner_timeout=settings.connect_timeout,
                       auth_timeout=settings.connect_timeout, channel_timeout=settings.connect_timeout)
    except BaseException as exc:
        client.close()
        sock.close()
        if isinstance(exc, Exception) and not is_transient(exc):
            raise connect_error(exc, settings) from None
        raise
    return client


def check_identity(settings: SSHSettings) -> None:
    if settings.identity_file is not None and not settings.identity_file.expanduser().is_file():
        raise TargetConfigError(f"identity file {settings.identity_file} does not exist",
                                "point identity_file (target profile, ~/.ssh/config) or --identity-file at "
                                "your private key")


def connect_error(exc: BaseException, settings: SSHSettings) -> Exception:
    """The typed error for a failed handshake or login with the hop `settings`."""
    import paramiko

    if isinstance(exc, TransportError | TargetConfigError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        known_hosts = known_hosts_path(settings)
        return HostKeyMismatchError(
            f"the host key of {settings.known_hosts_name} CHANGED: {known_hosts} has "
            f"{exc.expected_key.get_name()} {exc.expected_key.fingerprint}, the target offers "
            f"{exc.key.get_name()} {exc.key.fingerprint}",
            f"if the target was reinstalled, remove the old key (ssh-keygen -f {known_hosts} -R "
            f"'{settings.known_hosts_name}') and connect again; otherwise someone may be intercepting")
    if isinstance(exc, paramiko.PasswordRequiredException):
        return AuthenticationFailedError(f"the identity file {settings.identity_file} is encrypted",
                                         f"load it into ssh-agent (ssh-add {settings.identity_file})")
    if isinstance(exc, paramiko.AuthenticationException):
        key = settings.identity_file or "ssh-agent keys"
        return AuthenticationFailedError(
            f"{settings.address} refused the login of {settings.user or 'the current user'} with {key}",
            "add the public key to ~/.ssh/authorized_keys of that user on the target, or fix "
            "user / identity_file (target profile, ~/.ssh/config or --user / --identity-file)")
    if isinstance(exc, paramiko.SSHException) and "no authentication methods" in str(exc).lower():
        return AuthenticationFailedError(f"no key to log in to {settings.address} with",
                                         "set identity_file in the target profile or load a key into ssh-agent")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return HostUnreachableError(
            f"{settings.host}:{settings.port}{settings.route} accepted the connection but the SSH handshake "
            "timed out", "check that an SSH server (not something else) listens on that port")
    if isinstance(exc, (paramiko.SSHException, EOFError, OSError)):
        hint = ("check the ProxyCommand in ~/.ssh/config (run it by hand: it must connect to the target's sshd)"
                if settings.proxy_command and not settings.jumps else
                "check that an SSH server listens on that port and is not overloaded")
        return HostUnreachableError(f"SSH handshake with {settings.host}:{settings.port}{settings.route} failed: "
                                    f"{exc or type(exc).__name__}", hint)
    return TransportError(f"cannot connect to {settings.address}{settings.route}: {type(exc).__name__}: {exc}",
                          "check the key file, the address and the route; rerun with --debug for details")


def open_chain(settings: SSHSettings, accepted: list[str]) -> list["paramiko.SSHClient"]:
    """Log in to every hop in turn (jump hosts, then the target); the clients, the target's last."""
    chain = [*settings.jumps, settings]
    clients: list[paramiko.SSHClient] = []
    try:
        sock = first_socket(settings)
        for position, hop in enumerate(chain):
            clients.append(login(hop, sock, accepted))
            if position + 1 < len(chain):
                sock = forward(clients[-1], hop, chain[position + 1])
    except BaseException:
        for client in reversed(clients):
            client.close()
        raise
    return clients
