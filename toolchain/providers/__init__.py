"""Target providers: what brings a target up on this machine and says how to reach it (the emulated Bluebox).

They sit beside the profiles, not inside them: profile code (toolchain.remote.target) knows nothing of
them and takes the provider as an argument; `resolve_profile` here is what the CLI calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolchain.providers.emulated import EmulatedBluebox
from toolchain.remote import target
from toolchain.remote.target import TargetProfile


def provide(profile: TargetProfile) -> TargetProfile:
    """The profile with host, keys and known_hosts from the provider its [emulation] table names, running."""
    if profile.emulation is None:
        return profile
    instance = EmulatedBluebox.from_settings(profile.emulation)
    instance.require_running()
    return instance.apply_to(profile)


def resolve_profile(reference: str | Path | None = None, *, host: str | None = None,
                    **overrides: Any) -> TargetProfile:
    """The profile a command runs with: file, its provider (unless --host names the target), ~/.ssh/config, flags."""
    return target.resolve_profile(reference, host=host, provider=provide, **overrides)
