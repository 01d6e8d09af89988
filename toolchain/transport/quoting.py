"""Building remote command lines so that no user string ever reaches a shell unquoted.

A remote command is always an argument vector. Over SSH the server hands the command line to the
login shell (`$SHELL -c LINE`), so every argument is quoted POSIX-style here, once, in one place.
"""

from __future__ import annotations

import re
import shlex
from typing import Mapping, Sequence

# coreutils `timeout` exits with 124 when it had to stop the command (and it kills the whole process
# group it started, so a timed-out command leaves nothing running on the target).
TIMEOUT_EXIT_STATUS = 124
# grace between `timeout`'s TERM and its KILL
TIMEOUT_KILL_AFTER_S = 5
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """The argument vector as a tuple of strings; refuses what no shell can pass through."""
    if isinstance(argv, str):
        raise TypeError("a remote command is an argument vector, not a string")
    args = tuple(argv)
    if not args:
        raise ValueError("empty command")
    for arg in args:
        if not isinstance(arg, str):
            raise TypeError(f"command argument {arg!r} is not a string")
        if "\0" in arg:
            raise ValueError(f"command argument {arg!r} contains a NUL byte")
    return args


def wrap_command(argv: Sequence[str], env: Mapping[str, str] | None = None,
                 timeout: float | None = None) -> tuple[str, ...]:
    """`argv` prefixed with `env NAME=VALUE ...` and `timeout -k 5 SECONDS` where asked."""
    args = check_argv(argv)
    if timeout is not None:
        args = ("timeout", "-k", str(TIMEOUT_KILL_AFTER_S), f"{max(timeout, 1.0):.0f}", *args)
    if env:
        for name in env:
            if not _ENV_NAME.match(name):
                raise ValueError(f"invalid environment variable name {name!r}")
        args = ("env", *(f"{name}={value}" for name, value in env.items()), *args)
    return args


def command_line(argv: Sequence[str], env: Mapping[str, str] | None = None,
                 timeout: float | None = None) -> str:
    """One POSIX shell command line running exactly `argv` (with `env` and a `timeout` wrapper).

    The trailing `; exit $?` keeps the login shell from exec'ing the command: the shell then reports a
    command killed by signal N as status 128+N, which SSH passes on (paramiko drops exit-signal).
    """
    return shlex.join(wrap_command(argv, env, timeout)) + "; exit $?"
