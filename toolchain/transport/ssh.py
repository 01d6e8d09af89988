"""SSH transport (paramiko): key authentication, strict host keys, timeouts, typed errors.

- Authentication: the identity file and/or ssh-agent, never a password.
- Host keys: checked against one known_hosts file. An unknown key is refused with its fingerprint
  unless `accept_new_host_key` is set (OpenSSH's `accept-new`: the key is then appended to the file);
  a changed key is always refused.
- Timeouts: TCP connect, SSH handshake and authentication each get `connect_timeout`; every command
  gets a timeout enforced on the target (coreutils `timeout`, which stops the whole process group) and
  a host-side deadline a little later in case the connection itself hangs; keep-alives detect dead links.
- Retries, with back-off, only for failures that are likely to pass (a handshake reset or a banner that
  did not arrive); a refused connection, a bad key or a failed login fail at once.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from toolchain.errors import (AuthenticationFailedError, ConnectionDroppedError, HostKeyMismatchError,
                              HostKeyUnknownError, HostUnreachableError, TargetConfigError, TransportError)
from toolchain.fsutil import atomic_write_bytes
from toolchain.transport.base import (BackgroundCommand, BytesCallback, CommandResult, LineCallback, LineSplitter,
                                      Transport, describe_argv, finish_command)
from toolchain.transport.quoting import TIMEOUT_KILL_AFTER_S, check_argv, command_line

if TYPE_CHECKING:
    import paramiko

# how much later than the on-target timeout the host gives up on a command that sends nothing back
_HOST_DEADLINE_GRACE_S = TIMEOUT_KILL_AFTER_S + 10.0
_POLL_S = 0.25


@dataclass(frozen=True)
class SSHSettings:
    """Everything needed to reach one target over SSH (no secrets: keys stay in their files)."""

    host: str
    port: int = 22
    user: str | None = None
    identity_file: Path | None = None
    known_hosts: Path = Path("~/.ssh/known_hosts")
    accept_new_host_key: bool = False
    use_agent: bool = True
    connect_timeout: float = 10.0
    keepalive_s: float = 15.0
    connect_attempts: int = 3
    retry_backoff_s: float = 0.5

    @property
    def known_hosts_name(self) -> str:
        """The host's name as known_hosts stores it (OpenSSH writes `[host]:port` for other ports)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"


def _known_hosts_path(settings: SSHSettings) -> Path:
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
            known_hosts = _known_hosts_path(settings)
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


def _is_transient(exc: BaseException) -> bool:
    """Handshake resets and missing banners pass; refusals, bad keys and failed logins do not."""
    import paramiko

    if isinstance(exc, (paramiko.AuthenticationException, paramiko.BadHostKeyException)):
        return False
    if isinstance(exc, (ConnectionResetError, EOFError)):
        return True
    return isinstance(exc, paramiko.SSHException) and (
        "banner" in str(exc).lower() or "reset" in str(exc).lower() or "closed" in str(exc).lower())


class _SSHBackground(BackgroundCommand):
    def __init__(self, channel: "paramiko.Channel") -> None:
        self._channel = channel
        self._buffer = b""

    def readline(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if self._channel.recv_ready():
                chunk = self._channel.recv(65536)
                if not chunk:
                    break
                self._buffer += chunk
                continue
            if self._channel.exit_status_ready() or self._channel.closed or time.monotonic() >= deadline:
                break
            select.select([self._channel], [], [], min(_POLL_S, max(deadline - time.monotonic(), 0)))
        if b"\n" not in self._buffer:
            return None
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace")

    def stop(self, timeout: float = 10.0) -> int | None:
        try:
            self._channel.shutdown_write()
            deadline = time.monotonic() + timeout
            while not self._channel.exit_status_ready() and time.monotonic() < deadline:
                if self._channel.closed:
                    break
                select.select([self._channel], [], [], _POLL_S)
            status = self._channel.recv_exit_status() if self._channel.exit_status_ready() else None
        except (OSError, EOFError):
            status = None
        self._channel.close()
        return status


class SSHTransport(Transport):
    """A target reached over SSH. Connects on first use; one connection, one channel per command."""

    def __init__(self, settings: SSHSettings) -> None:
        self.settings = settings
        self.target = settings.address
        #: host keys trusted during this session through `accept_new_host_key` (for the CLI to report)
        self.accepted_host_keys: list[str] = []
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    # --- connection ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection now (otherwise the first command does)."""
        self._connected()

    def _connected(self) -> "paramiko.SSHClient":
        if self._client is not None:
            transport = self._client.get_transport()
            if transport is not None and transport.is_active():
                return self._client
            self._drop_client()
            raise ConnectionDroppedError(f"the connection to {self.target} dropped",
                                         "check the network and the target, then rerun")
        settings = self.settings
        if settings.identity_file is not None and not settings.identity_file.expanduser().is_file():
            raise TargetConfigError(f"identity file {settings.identity_file} does not exist",
                                    "point identity_file (target profile) or --identity-file at your private key")
        delay = settings.retry_backoff_s
        for attempt in range(1, settings.connect_attempts + 1):
            try:
                self._client = self._open_client()
                return self._client
            except Exception as exc:
                if attempt < settings.connect_attempts and _is_transient(exc):
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise self._connect_error(exc) from None
        raise AssertionError("unreachable: the loop returns or raises")

    def _open_client(self) -> "paramiko.SSHClient":
        import paramiko

        settings = self.settings
        try:
            sock = socket.create_connection((settings.host, settings.port), timeout=settings.connect_timeout)
        except ConnectionResetError:
            raise  # accepted and reset at once (an overloaded server or a flaky link): worth a retry
        except OSError as exc:
            raise self._unreachable(exc) from None
        client = paramiko.SSHClient()
        known_hosts = _known_hosts_path(settings)
        try:
            if known_hosts.is_file():
                client.load_host_keys(str(known_hosts))
            client.set_missing_host_key_policy(_host_key_policy(settings, self.accepted_host_keys))
            client.connect(settings.host, port=settings.port, username=settings.user, password=None,
                           key_filename=str(settings.identity_file.expanduser()) if settings.identity_file else None,
                           allow_agent=settings.use_agent, look_for_keys=False, sock=sock,
                           timeout=settings.connect_timeout, banner_timeout=settings.connect_timeout,
                           auth_timeout=settings.connect_timeout, channel_timeout=settings.connect_timeout)
        except BaseException:
            client.close()
            sock.close()
            raise
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(max(int(settings.keepalive_s), 1))
        return client

    def _unreachable(self, exc: OSError) -> HostUnreachableError:
        settings = self.settings
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

    def _connect_error(self, exc: BaseException) -> Exception:
        import paramiko

        settings = self.settings
        if isinstance(exc, (HostUnreachableError, HostKeyUnknownError, TargetConfigError)):
            return exc
        if isinstance(exc, paramiko.BadHostKeyException):
            known_hosts = _known_hosts_path(settings)
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
                f"{settings.host}:{settings.port} accepted the connection but the SSH handshake timed out",
                "check that an SSH server (not something else) listens on that port")
        if isinstance(exc, (paramiko.SSHException, EOFError, OSError)):
            return HostUnreachableError(f"SSH handshake with {settings.host}:{settings.port} failed: {exc}",
                                        "check that an SSH server listens on that port and is not overloaded")
        return exc if isinstance(exc, Exception) else TransportError(str(exc))

    def _drop_client(self) -> None:
        client, self._client, self._sftp = self._client, None, None
        if client is not None:
            client.close()

    def _alive(self) -> bool:
        transport = self._client.get_transport() if self._client is not None else None
        return transport is not None and transport.is_active()

    def _lost(self, exc: BaseException) -> bool:
        """Did this failure come from the connection going away (rather than from the target)?"""
        if isinstance(exc, (EOFError, ConnectionError)):
            return True
        # paramiko's reader thread may need a moment to notice a closed socket
        deadline = time.monotonic() + 0.5
        while self._alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self._alive()

    def _dropped(self, during: str) -> ConnectionDroppedError:
        self._drop_client()
        return ConnectionDroppedError(f"the connection to {self.target} dropped during {during}",
                                      "check the network and the target, then rerun (finished steps are kept)")

    def _open_channel(self, line: str, label: str) -> "paramiko.Channel":
        import paramiko

        client = self._connected()
        transport = client.get_transport()
        assert transport is not None
        try:
            channel = transport.open_session(timeout=self.settings.connect_timeout)
            channel.exec_command(line)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if self._lost(exc):
                raise self._dropped(label) from None
            raise TransportError(f"cannot start {label} on {self.target}: {exc}",
                                 "check the target's sshd limits (MaxSessions) and rerun") from None
        return channel

    # --- the contract -------------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, timeout: float | None = None, env: Mapping[str, str] | None = None,
            stdin: bytes | None = None, check: bool = True, label: str | None = None,
            on_stderr_line: LineCallback | None = None) -> CommandResult:
        args = check_argv(argv)
        label = label or describe_argv(args)
        started = time.monotonic()
        channel = self._open_channel(command_line(args, env, timeout), label)
        out, err = bytearray(), bytearray()
        splitter = LineSplitter(on_stderr_line)
        host_deadline = None if timeout is None else started + timeout + _HOST_DEADLINE_GRACE_S
        try:
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            while True:
                while channel.recv_ready():
                    out += channel.recv(65536)
                while channel.recv_stderr_ready():
                    chunk = channel.recv_stderr(65536)
                    err += chunk
                    splitter.feed(chunk.decode(errors="replace"))
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready() \
                        and (channel.eof_received or channel.closed):
                    break
                if not self._alive():
                    raise self._dropped(label)
                if host_deadline is not None and time.monotonic() > host_deadline:
                    channel.close()
                    return finish_command(self.target, label, args, 124, out.decode(errors="replace"),
                                          err.decode(errors="replace"), time.monotonic() - started, timeout, check)
                select.select([channel], [], [], _POLL_S)
            status = channel.recv_exit_status()
        except (OSError, EOFError) as exc:
            if self._lost(exc):
                raise self._dropped(label) from None
            raise TransportError(f"{label} on {self.target} failed: {exc}", "rerun; if it persists, check sshd") \
                from None
        finally:
            channel.close()
        splitter.flush()
        return finish_command(self.target, label, args, status, out.decode(errors="replace"),
                              err.decode(errors="replace"), time.monotonic() - started, timeout, check)

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              label: str | None = None) -> BackgroundCommand:
        args = check_argv(argv)
        return _SSHBackground(self._open_channel(command_line(args, env), label or describe_argv(args)))

    def _sftp_client(self) -> "paramiko.SFTPClient":
        import paramiko

        if self._sftp is None or not self._alive():
            client = self._connected()
            try:
                self._sftp = client.open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if self._lost(exc):
                    raise self._dropped("SFTP start") from None
                raise TransportError(f"{self.target} offers no SFTP: {exc}",
                                     "enable the sftp subsystem in the target's sshd_config") from None
        return self._sftp

    def put(self, local: Path, remote: str, *, on_bytes: BytesCallback | None = None) -> int:
        sftp = self._sftp_client()
        size = Path(local).stat().st_size
        try:
            sftp.put(str(local), remote, callback=(lambda sent, _total: on_bytes(sent)) if on_bytes else None,
                     confirm=True)
        except Exception as exc:  # paramiko raises OSError, EOFError or SSHException here
            if self._lost(exc):
                raise self._dropped(f"the upload of {Path(local).name}") from None
            try:
                sftp.remove(remote)
            except (OSError, EOFError):
                pass
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise TransportError(f"cannot write {remote} on {self.target}: {reason}",
                                 "check free space and permissions of the target folder") from None
        return size

    def get(self, remote: str, local: Path) -> int:
        sftp = self._sftp_client()
        try:
            with sftp.open(remote, "rb") as handle:
                data = handle.read()
        except (OSError, EOFError) as exc:
            if self._lost(exc):
                raise self._dropped(f"the download of {remote}") from None
            raise TransportError(f"cannot read {remote} on {self.target}: {getattr(exc, 'strerror', None) or exc}",
                                 "check that the file exists on the target") from None
        atomic_write_bytes(local, data)
        return len(data)

    def close(self) -> None:
        self._drop_client()
