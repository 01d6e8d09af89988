"""The local twin of the SSH transport: the same contract and errors, run on this machine.

Used for `--host local` (deploy and bench into a folder here) and for fast tests of the code above the
transport. Commands run without a shell, in their own process group, so a timeout stops all of them.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Mapping, Sequence

from toolchain.errors import TransportError
from toolchain.fsutil import atomic_write_bytes
from toolchain.transport.base import (BackgroundCommand, BytesCallback, CommandResult, LineCallback, LineSplitter,
                                      Transport, describe_argv, finish_command)
from toolchain.transport.quoting import TIMEOUT_EXIT_STATUS, check_argv

_CHUNK = 1 << 20


def _pump(stream: IO[bytes], into: "queue.Queue[tuple[str, bytes]]", tag: str) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):
        into.put((tag, chunk))
    into.put((tag, b""))


def _start(argv: Sequence[str], env: Mapping[str, str] | None, stdin: int) -> subprocess.Popen:
    args = check_argv(argv)
    try:
        return subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    except OSError as exc:
        raise TransportError(f"cannot start {describe_argv(args)}: {exc.strerror or exc}",
                             "check the python path in the target profile") from None


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


class _LocalBackground(BackgroundCommand):
    def __init__(self, process: subprocess.Popen) -> None:
        self._process = process
        self._lines: "queue.Queue[bytes | None]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in iter(self._process.stdout.readline, b""):
            self._lines.put(line)
        self._lines.put(None)

    def readline(self, timeout: float) -> str | None:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return None
        return None if line is None else line.decode(errors="replace").rstrip("\n")

    def send(self, data: bytes) -> bool:
        try:
            assert self._process.stdin is not None
            self._process.stdin.write(data)
            self._process.stdin.flush()
        except (OSError, ValueError):  # ValueError: stdin already closed by stop()
            return False
        return True

    def stop(self, timeout: float = 10.0) -> int | None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(self._process)
            return None


class LocalTransport(Transport):
    """Runs commands and copies files on this machine."""

    def __init__(self) -> None:
        self.target = "local"

    def run(self, argv: Sequence[str], *, timeout: float | None = None, env: Mapping[str, str] | None = None,
            stdin: bytes | None = None, check: bool = True, label: str | None = None,
            on_stderr_line: LineCallback | None = None) -> CommandResult:
        args = check_argv(argv)
        started = time.monotonic()
        process = _start(args, env, subprocess.PIPE if stdin is not None else subprocess.DEVNULL)
        chunks: "queue.Queue[tuple[str, bytes]]" = queue.Queue()
        for tag, stream in (("out", process.stdout), ("err", process.stderr)):
            threading.Thread(target=_pump, args=(stream, chunks, tag), daemon=True).start()
        if stdin is not None:
            threading.Thread(target=self._feed, args=(process, stdin), daemon=True).start()
        out, err = bytearray(), bytearray()
        splitter = LineSplitter(on_stderr_line)
        open_streams, timed_out = 2, False
        # callbacks run here, in the caller's thread, exactly as with SSH
        while open_streams:
            remaining = None if timeout is None else timeout - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                timed_out = True
                _kill_group(process)
                break
            try:
                tag, chunk = chunks.get(timeout=0.25 if remaining is None else min(0.25, remaining))
            except queue.Empty:
                continue
            if not chunk:
                open_streams -= 1
            elif tag == "out":
                out += chunk
            else:
                err += chunk
                splitter.feed(chunk.decode(errors="replace"))
        splitter.flush()
        status = TIMEOUT_EXIT_STATUS if timed_out else process.wait()
        return finish_command(self.target, label or describe_argv(args), args, status,
                              out.decode(errors="replace"), err.decode(errors="replace"),
                              time.monotonic() - started, timeout, check)

    @staticmethod
    def _feed(process: subprocess.Popen, data: bytes) -> None:
        assert process.stdin is not None
        try:
            process.stdin.write(data)
            process.stdin.close()
        except BrokenPipeError:
            pass

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              label: str | None = None) -> BackgroundCommand:
        return _LocalBackground(_start(argv, env, subprocess.PIPE))

    def put(self, local: Path, remote: str, *, on_bytes: BytesCallback | None = None) -> int:
        sent = 0
        try:
            with open(local, "rb") as source, open(remote, "wb") as target:
                for chunk in iter(lambda: source.read(_CHUNK), b""):
                    target.write(chunk)
                    sent += len(chunk)
                    if on_bytes:
                        on_bytes(sent)
        except OSError as exc:
            Path(remote).unlink(missing_ok=True)
            raise TransportError(f"cannot copy {local} to {remote}: {exc.strerror or exc}",
                                 "check free space and permissions of the target folder") from None
        return sent

    def get(self, remote: str, local: Path) -> int:
        try:
            data = Path(remote).read_bytes()
        except OSError as exc:
            raise TransportError(f"cannot read {remote}: {exc.strerror or exc}",
                                 "check that the file exists on the target") from None
        atomic_write_bytes(local, data)
        return len(data)

    def close(self) -> None:
        """Nothing to release."""

