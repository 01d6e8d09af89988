"""The Transport contract: run a command, put a file, get a file, close.

Two implementations share it: `SSHTransport` (paramiko, the real target) and `LocalTransport` (this
machine, the twin used for `--host local` and fast tests). Both raise the same typed errors, so the
code above them (deploy, bench) never sees paramiko or subprocess.
"""

from __future__ import annotations

import json
import shlex
import signal
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from toolchain.errors import CommandFailedError, CommandTimedOutError, TransportError
from toolchain.transport.quoting import TIMEOUT_EXIT_STATUS

LineCallback = Callable[[str], None]
BytesCallback = Callable[[int], None]

# Enough of a failing command's stderr to say what went wrong, not its whole log.
_STDERR_KEPT = 20_000


@dataclass(frozen=True)
class CommandResult:
    """What a finished command returned."""

    argv: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> Any:
        """stdout parsed as one JSON document (the target helpers print exactly one)."""
        try:
            return json.loads(self.stdout)
        except ValueError:
            raise TransportError(f"{describe_argv(self.argv)} printed no valid JSON: {self.stdout[-200:]!r}",
                                 "the target's Python or helper output is not what this version expects") from None


def describe_argv(argv: Sequence[str], limit: int = 80) -> str:
    """A short, quoted rendering of a command for messages."""
    text = shlex.join(argv)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def last_line(text: str) -> str:
    """The last non-empty line of some output (the one that usually says what failed)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def describe_exit(exit_status: int) -> str:
    """How a command ended, in words (signals named, the shell's 128+N convention decoded)."""
    if exit_status == -1:
        return "was killed (the SSH server reported no exit status)"
    if exit_status < 0:
        return f"was killed by {_signal_name(-exit_status)}"
    if 128 < exit_status <= 128 + 64:
        return f"exited with status {exit_status} (128+{exit_status - 128}: killed by " \
               f"{_signal_name(exit_status - 128)})"
    return f"exited with status {exit_status}"


def finish_command(target: str, label: str, argv: tuple[str, ...], exit_status: int, stdout: str,
                   stderr: str, seconds: float, timeout: float | None, check: bool) -> CommandResult:
    """Turn an exit status into a result or the typed error that explains it.

    `exit_status` follows the shell: 0-255 as returned, 128+N when a signal N killed the command,
    -N when the platform reported the signal directly, -1 when SSH reported no status at all.
    """
    if timeout is not None and exit_status == TIMEOUT_EXIT_STATUS:
        raise CommandTimedOutError(f"{label} on {target} ran past its {timeout:g} s timeout and was stopped",
                                   "raise the timeout (command_timeout / bench_timeout in the target "
                                   "profile) or check what keeps the target busy")
    result = CommandResult(argv, exit_status, stdout, stderr[-_STDERR_KEPT:], seconds)
    if exit_status == 0 or not check:
        return result
    cause = describe_exit(exit_status)
    detail = last_line(stderr)
    raise CommandFailedError(f"{label} on {target} {cause}" + (f": {detail}" if detail else ""),
                             "the last line of the command's error output is shown; fix the cause on the target and rerun",
                             exit_status=exit_status, stderr=result.stderr)


class LineSplitter:
    """Feeds decoded text to a callback one complete line at a time."""

    def __init__(self, callback: LineCallback | None) -> None:
        self._callback = callback
        self._pending = ""

    def feed(self, text: str) -> None:
        if self._callback is None:
            return
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._callback(line.rstrip("\r"))

    def flush(self) -> None:
        if self._callback is not None and self._pending:
            self._callback(self._pending.rstrip("\r"))
        self._pending = ""


class BackgroundCommand(ABC):
    """A command left running while others run (the target lock is held by one)."""

    @abstractmethod
    def readline(self, timeout: float) -> str | None:
        """The next line of its stdout, or None when it ended or nothing came within `timeout` s."""

    @abstractmethod
    def send(self, data: bytes) -> bool:
        """Write `data` to its stdin (a heartbeat); False when the command or its connection is gone."""

    @abstractmethod
    def stop(self, timeout: float = 10.0) -> int | None:
        """Close its stdin (its cue to finish), wait for it, return its exit status (None: unknown)."""


class Transport(ABC):
    """Run commands on a target and move files to and from it."""

    #: how the target appears in messages, e.g. ``bluebox@10.234.224.16:22`` or ``local``
    target: str

    @abstractmethod
    def run(self, argv: Sequence[str], *, timeout: float | None = None, env: Mapping[str, str] | None = None,
            stdin: bytes | None = None, check: bool = True, label: str | None = None,
            on_stderr_line: LineCallback | None = None) -> CommandResult:
        """Run `argv` (never a shell string), wait for it, return its output.

        `timeout` stops the command on the target after that many seconds (CommandTimedOutError);
        `check` raises CommandFailedError for a non-zero exit; `on_stderr_line` sees stderr as it arrives.
        """

    @abstractmethod
    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              label: str | None = None) -> BackgroundCommand:
        """Start `argv` and return without waiting; its stdin stays open until `stop()`."""

    @abstractmethod
    def put(self, local: Path, remote: str, *, on_bytes: BytesCallback | None = None) -> int:
        """Copy a local file to `remote` (the caller picks a temporary name); returns bytes sent."""

    @abstractmethod
    def get(self, remote: str, local: Path) -> int:
        """Copy `remote` to `local` atomically (temporary file, then rename); returns bytes received."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; safe to call twice."""

    def cancel(self) -> None:
        """Close the connection from another thread and refuse to open it again (a fleet run's Ctrl-C)."""
        self.close()

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
