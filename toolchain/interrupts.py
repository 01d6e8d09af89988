"""Ctrl-C, recorded: every SIGINT the process takes is noted here before anything else happens to it.

A KeyboardInterrupt does not always reach the code that should stop. Python swallows one raised in a weakref
callback or a ``__del__`` ("Exception ignored in ..."; SQLAlchemy's class registry has such callbacks, and
9 of 40 Ctrl-Cs sent into a loop of Optuna storage calls were lost that way), and a library may turn one into
its own error (Optuna's RDB storage reported a Ctrl-C met in a commit as StorageInternalError, once in CI).
So the handler records the signal first: a loop that polls `seen()` stops even where the KeyboardInterrupt
was lost, and the CLI reports an error that follows a recorded Ctrl-C as the interruption it was (exit 130).

`deferred()` goes further for code that must not be cut in the middle (a storage transaction, torch's
tracer): a Ctrl-C inside the block is recorded and takes effect when the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

_seen: list[int] = []


def record(signum: int) -> None:
    """Note one interrupt (a signal handler's first step)."""
    _seen.append(signum)


def seen() -> bool:
    """Whether a Ctrl-C was taken since the last `clear()`."""
    return bool(_seen)


def clear() -> None:
    """Forget earlier interrupts (the start of a command)."""
    _seen.clear()


def raise_if_seen() -> None:
    """A safe point: raise KeyboardInterrupt if a Ctrl-C was taken, even one whose exception was lost."""
    if _seen:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Ctrl-C inside the block is recorded and takes effect when the block ends (the previous handler runs
    then). Outside the main thread (where signals are not delivered) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, _frame: Any) -> None:
        record(signum)
        caught.append(signum)

    hold.deferring = True  # type: ignore[attr-defined]
    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if not caught or previous is signal.SIG_IGN:
        return
    if getattr(previous, "deferring", False):
        previous(signal.SIGINT, None)  # inside another deferred block: that one raises when it ends
        return
    if callable(previous):
        previous(signal.SIGINT, None)  # the CLI's handler: records the interrupt and raises
    raise KeyboardInterrupt
