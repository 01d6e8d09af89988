"""`toolchain target emulated up|down|status`: the emulated aarch64 Bluebox (a provider, toolchain.providers)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from toolchain.cli.options import JsonOption, TargetOption
from toolchain.cli.output import emit_json, info, table
from toolchain.errors import UsageError

if TYPE_CHECKING:
    from toolchain.providers.emulated import EmulatedBluebox

emulated_app = typer.Typer(no_args_is_help=True,
                           help="The emulated aarch64 Bluebox (qemu-user + Debian arm64 + sshd in a netns; root).")


def _emulated(target: str | None) -> "EmulatedBluebox":
    from toolchain.providers.emulated import EmulatedBluebox
    from toolchain.remote.target import load_profile

    profile = load_profile(target or "emulated")
    if profile.emulation is None:
        raise UsageError(f"target profile {profile.name} has no [emulation] table",
                         "use --target emulated (targets/emulated/target.toml)")
    return EmulatedBluebox.from_settings(profile.emulation)


@emulated_app.command("up")
def emulated_up(
    target: TargetOption = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start from a clean disk (drops provisioned runtimes).")]
    = False,
) -> None:
    """Build (once, ~2 min) and start the emulated Bluebox; it runs until `toolchain target emulated down`."""
    instance = _emulated(target)
    instance.up(fresh=fresh, on_message=info)


@emulated_app.command("down")
def emulated_down(
    target: TargetOption = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also delete its disk and keys.")] = False,
) -> None:
    """Stop the emulated Bluebox (its processes by pid) and delete its network namespace."""
    instance = _emulated(target)
    if purge:
        instance.purge()
        info("stopped and purged")
    else:
        info("stopped" if instance.down() else "was not running")


@emulated_app.command("status")
def emulated_status(target: TargetOption = None, json_output: JsonOption = False) -> None:
    """Is the emulated Bluebox running, where, and is its root filesystem cached?"""
    status = _emulated(target).status()
    record = {"instance": status.instance, "running": status.running, "address": status.address, "pid": status.pid,
              "rootfs_cached": str(status.rootfs_cached) if status.rootfs_cached else None,
              "rootfs_bytes": status.rootfs_bytes, "state_dir": str(status.state_dir)}
    if json_output:
        emit_json(record)
    else:
        table("emulated Bluebox", ["key", "value"], [(key, value) for key, value in record.items()])
