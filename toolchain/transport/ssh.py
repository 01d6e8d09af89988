"""SSH transport (paramiko): key authentication, strict host keys, deadlines on every read and write, typed errors.

- Authentication: the identity file and/or ssh-agent, never a password.
- Host keys: checked against one known_hosts file, for the target and every jump host alike. An unknown
  key is refused with its fingerprint unless `accept_new_host_key` is set (OpenSSH's `accept-new`: the
  key is then appended to the file); a changed key is always refused.
- Routes: direct, through a ProxyCommand, or through ProxyJump hosts (direct-tcpip channels); see
  toolchain.transport.ssh_connect.
- Deadlines: TCP connect, SSH handshake and authentication each get `connect_timeout`; every command
  gets a timeout enforced on the target (`timeout`, coreutils or BusyBox, which stops the whole
  process group) and a host-side deadline a little later in case the connection itself hangs; every
  channel read and write, SFTP included, fails after `stall_timeout` seconds without progress; and
  keep-alives that want an answer close a connection whose peer went silent (toolchain.transport.liveness).
- Files: SFTP where the server has it, else an exec-channel stream checked by sha256
  (toolchain.transport.stream), so any POSIX SSH server (dropbear without sftp-server) is a target.
- Retries, with back-off, only for failures that are likely to pass (a handshake reset or a banner that
  did not arrive); a refused connection, a bad key or a failed login fail at once.
"""

from __future__ import annotations

import select
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

from toolchain.errors import ConnectionDroppedError, TransportError
from toolchain.fsutil import atomic_write_bytes
from toolchain.hashing import sha256_file
from toolchain.transport.base import (BackgroundCommand, BytesCallback, CommandResult, LineCallback, LineSplitter,
                                      Transport, describe_argv, finish_command)
from toolchain.transport.liveness import PeerWatch
from toolchain.transport.quoting import TIMEOUT_KILL_AFTER_S, check_argv, command_line
from toolchain.transport.ssh_connect import SSHSettings, check_identity, connect_error, is_transient, open_chain
from toolchain.transport.stream import get_command, put_command

if TYPE_CHECKING:
    import paramiko

__all__ = ["SSHSettings", "SSHTransport"]

# how much later than the on-target timeout the host gives up on a command that sends nothing back
_HOST_DEADLINE_GRACE_S = TIMEOUT_KILL_AFTER_S + 10.0
_POLL_S = 0.25
_CHUNK = 32768
# the SFTP version exchange is one round trip; a subsystem silent this long is treated as missing
SFTP_START_TIMEOUT = 30.0


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

    def send(self, data: bytes) -> bool:
        try:
            self._channel.sendall(data)
        except Exception:  # paramiko raises OSError, EOFError or SSHException on a closed or stalled channel
            return False
        return True

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
        self._hops: list[paramiko.SSHClient] = []
        self._watch: PeerWatch | None = None
        self._sftp: paramiko.SFTPClient | None = None
        #: the server has no SFTP subsystem: files go over exec channels
        self.sftp_missing = False
        self._cancelled = False

    # --- connection ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection now (otherwise the first command does)."""
        self._connected()

    def _connected(self) -> "paramiko.SSHClient":
        if self._cancelled:
            raise ConnectionDroppedError(f"the connection to {self.target} was closed: the run was interrupted",
                                         "rerun the command (finished steps are kept)")
        if self._client is not None:
            if self._alive():
                return self._client
            raise self._dropped(None)
        settings = self.settings
        for hop in (*settings.jumps, settings):
            check_identity(hop)
        delay = settings.retry_backoff_s
        for attempt in range(1, settings.connect_attempts + 1):
            try:
                *self._hops, self._client = open_chain(settings, self.accepted_host_keys)
            except Exception as exc:
                if attempt < settings.connect_attempts and is_transient(exc):
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise connect_error(exc, settings) from None
            transport = self._client.get_transport()
            assert transport is not None
            self._watch = PeerWatch(transport, settings.keepalive_s, settings.keepalive_count)
            return self._client
        raise AssertionError("unreachable: the loop returns or raises")

    def _drop_client(self) -> None:
        client, self._client, self._sftp = self._client, None, None
        hops, self._hops = self._hops, []
        if self._watch is not None:
            self._watch.stop()
        for each in [client, *reversed(hops)]:
            if each is not None:
                link = each.get_transport()
                each.close()
                # paramiko's reader thread holds the socket until its current read times out (0.1 s): wait for it,
                # so that a closed transport's TCP connection is really gone (a fleet's --forks counts on that)
                if link is not None and link is not threading.current_thread():
                    link.join(timeout=1.0)

    def _alive(self) -> bool:
        transport = self._client.get_transport() if self._client is not None else None
        return transport is not None and transport.is_active()

    def _still_connected(self) -> bool:
        # paramiko's reader thread may need a moment to notice a closed socket
        deadline = time.monotonic() + 0.5
        while self._alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self._alive()

    def _lost(self, exc: BaseException) -> bool:
        """Did this failure come from the connection going away (rather than from the target)?"""
        return isinstance(exc, (EOFError, ConnectionError)) or not self._still_connected()

    def _dropped(self, during: str | None) -> ConnectionDroppedError:
        watch = self._watch
        self._drop_client()
        step = f" during {during}" if during else ""
        if watch is not None and watch.dead:
            return ConnectionDroppedError(
                f"{self.target}{self.settings.route} stopped answering{step}: no reply to keep-alives for "
                f"{watch.silence_s:g} s, so the connection was closed",
                "check the network link to the target (and any jump host) and that the target is up, then rerun "
                "(finished steps are kept)")
        return ConnectionDroppedError(f"the connection to {self.target} dropped{step}",
                                      "check the network and the target, then rerun (finished steps are kept)")

    def _stalled(self, during: str) -> ConnectionDroppedError:
        self._drop_client()
        return ConnectionDroppedError(
            f"{during} on {self.target} stalled: no progress for {self.settings.stall_timeout:g} s, so the "
            "connection was closed",
            "check the network link to the target (and any jump host), then rerun (finished steps are kept)")

    def _open_channel(self, line: str, label: str) -> "paramiko.Channel":
        import paramiko

        client = self._connected()
        transport = client.get_transport()
        assert transport is not None
        try:
            channel = transport.open_session(timeout=self.settings.connect_timeout)
            channel.settimeout(self.settings.stall_timeout)
            channel.exec_command(line)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if self._lost(exc):
                raise self._dropped(label) from None
            raise TransportError(f"cannot start {label} on {self.target}: {exc}",
                                 "check the target's sshd limits (MaxSessions) and rerun") from None
        return channel

    def _collect(self, channel: "paramiko.Channel", out: bytearray, err: bytearray, splitter: LineSplitter,
                 host_deadline: float | None, label: str) -> int | None:
        """Read stdout and stderr until the command ends; its exit status (None: the host deadline passed)."""
        while True:
            while channel.recv_ready():
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                chunk = channel.recv_stderr(65536)
                err += chunk
                splitter.feed(chunk.decode(errors="replace"))
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready() \
                    and (channel.eof_received or channel.closed):
                status = channel.recv_exit_status()
                if status == -1 and not self._alive():  # closed with the connection, not ended
                    raise self._dropped(label)
                return status
            if not self._alive():
                raise self._dropped(label)
            if host_deadline is not None and time.monotonic() > host_deadline:
                return None
            select.select([channel], [], [], _POLL_S)

    def _feed(self, channel: "paramiko.Channel", stdin: Iterator[bytes], on_bytes: BytesCallback | None) -> None:
        sent = 0
        for chunk in stdin:
            try:
                channel.sendall(chunk)
            except OSError:
                if channel.exit_status_ready() and self._alive():
                    return  # the command ended before reading all of it: its status and stderr say why
                raise
            sent += len(chunk)
            if on_bytes is not None:
                on_bytes(sent)
        channel.shutdown_write()

    @contextmanager
    def _guarded(self, label: str, failed: Callable[[BaseException], TransportError]) -> Iterator[None]:
        """Turn what paramiko raises in the block into a stall, a drop, or `failed(exc)` (the target's refusal)."""
        try:
            yield
        except TimeoutError:  # socket.timeout: a channel read or write made no progress for stall_timeout
            raise self._stalled(label) from None
        except TransportError:
            raise
        except Exception as exc:  # paramiko raises OSError, EOFError or SSHException
            if self._lost(exc):
                raise self._dropped(label) from None
            raise failed(exc) from None

    def _exchange(self, channel: "paramiko.Channel", label: str, stdin: Iterator[bytes],
                  host_deadline: float | None = None, on_stderr_line: LineCallback | None = None,
                  on_bytes: BytesCallback | None = None) -> tuple[int | None, bytes, bytes]:
        """Send `stdin`, then collect the command's output: (exit status or None, stdout, stderr)."""
        out, err = bytearray(), bytearray()
        splitter = LineSplitter(on_stderr_line)
        try:
            with self._guarded(label, lambda exc: TransportError(f"{label} on {self.target} failed: {exc}",
                                                                 "rerun; if it persists, check sshd")):
                self._feed(channel, stdin, on_bytes)
                status = self._collect(channel, out, err, splitter, host_deadline, label)
        finally:
            channel.close()
        splitter.flush()
        return status, bytes(out), bytes(err)

    # --- the contract -------------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, timeout: float | None = None, env: Mapping[str, str] | None = None,
            stdin: bytes | None = None, check: bool = True, label: str | None = None,
            on_stderr_line: LineCallback | None = None) -> CommandResult:
        args = check_argv(argv)
        label = label or describe_argv(args)
        started = time.monotonic()
        channel = self._open_channel(command_line(args, env, timeout), label)
        host_deadline = None if timeout is None else started + timeout + _HOST_DEADLINE_GRACE_S
        status, out, err = self._exchange(channel, label, iter([stdin] if stdin else []), host_deadline,
                                          on_stderr_line)
        return finish_command(self.target, label, args, 124 if status is None else status,
                              out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - started,
                              timeout, check)

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              label: str | None = None) -> BackgroundCommand:
        args = check_argv(argv)
        return _SSHBackground(self._open_channel(command_line(args, env), label or describe_argv(args)))

    def _sftp_client(self) -> "paramiko.SFTPClient | None":
        """The connection's SFTP session, or None where the server has no SFTP (remembered)."""
        import paramiko

        if self.sftp_missing:
            return None
        if self._sftp is None or not self._alive():
            client = self._connected()
            channel = None
            try:
                # opened by hand to bound the version exchange: paramiko's open_sftp() waits without a timeout,
                # and a server whose subsystem never answers (seen: dropbear without sftp-server behind a jump
                # host, under load) hung `deploy` for good; timed out, the copy streams over exec instead
                channel = client.get_transport().open_session(timeout=self.settings.connect_timeout)
                channel.settimeout(min(self.settings.stall_timeout, SFTP_START_TIMEOUT))
                channel.invoke_subsystem("sftp")
                self._sftp = paramiko.SFTPClient(channel)
            except (paramiko.SSHException, OSError, EOFError):
                if channel is not None:
                    channel.close()
                # a server without the subsystem refuses it or closes the channel; the connection stays
                if not self._still_connected():
                    raise self._dropped("SFTP start") from None
                self.sftp_missing = True
                return None
            self._sftp.get_channel().settimeout(self.settings.stall_timeout)
        return self._sftp

    def _streamed(self, argv: list[str], label: str, stdin: Iterator[bytes], on_bytes: BytesCallback | None,
                  refused: str, hint: str) -> bytes:
        """Run a file-copy command over an exec channel; its stdout, or the target's reason as an error."""
        status, out, err = self._exchange(self._open_channel(command_line(argv), label), label, stdin,
                                          on_bytes=on_bytes)
        if status != 0:
            reason = err.decode(errors="replace").strip()[-300:] or f"exit status {status}"
            raise TransportError(f"{refused} on {self.target}: {reason}", hint)
        return out

    def put(self, local: Path, remote: str, *, on_bytes: BytesCallback | None = None) -> int:
        size = Path(local).stat().st_size
        label, hint = f"the upload of {Path(local).name}", "check free space and permissions of the target folder"
        sftp = self._sftp_client()
        if sftp is None:
            with open(local, "rb") as handle:
                self._streamed(put_command(remote, sha256_file(local)), label, iter(lambda: handle.read(_CHUNK), b""),
                               on_bytes, f"cannot write {remote}", hint)
            return size

        def refused(exc: BaseException) -> TransportError:
            try:
                sftp.remove(remote)
            except (OSError, EOFError):
                pass
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            return TransportError(f"cannot write {remote} on {self.target}: {reason}", hint)

        with self._guarded(label, refused):
            sftp.put(str(local), remote, callback=(lambda sent, _total: on_bytes(sent)) if on_bytes else None,
                     confirm=True)
        return size

    def get(self, remote: str, local: Path) -> int:
        label, hint = f"the download of {remote}", "check that the file exists on the target"
        sftp = self._sftp_client()
        if sftp is None:
            data = self._streamed(get_command(remote), label, iter([]), None, f"cannot read {remote}", hint)
        else:
            with self._guarded(label, lambda exc: TransportError(
                    f"cannot read {remote} on {self.target}: {getattr(exc, 'strerror', None) or exc}", hint)):
                with sftp.open(remote, "rb") as handle:
                    data = handle.read()
        atomic_write_bytes(local, data)
        return len(data)

    def close(self) -> None:
        self._drop_client()

    def cancel(self) -> None:
        # a command blocked on a channel of this connection sees it close and raises ConnectionDroppedError;
        # the target's lock helper sees its stdin close and gives the lock up
        self._cancelled = True
        self._drop_client()
