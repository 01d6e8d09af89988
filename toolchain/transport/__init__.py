"""Talking to a target: the Transport contract, its SSH (paramiko) and local implementations, quoting.

paramiko is imported only when an SSH connection is opened, so importing this package is cheap.
"""

from toolchain.transport.base import BackgroundCommand, CommandResult, Transport
from toolchain.transport.local import LocalTransport
from toolchain.transport.quoting import command_line
from toolchain.transport.ssh import SSHSettings, SSHTransport

__all__ = ["BackgroundCommand", "CommandResult", "LocalTransport", "SSHSettings", "SSHTransport", "Transport",
           "command_line"]
