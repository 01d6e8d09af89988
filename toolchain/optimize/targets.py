"""Which target a choice of `toolchain optimize` belongs to: a key from the resolved profile (name and address)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from toolchain.remote.target import TargetProfile

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def target_key(profile: "TargetProfile") -> str:
    """A file-name-safe key of a target: its profile's name and address (``bluebox2-bluebox-10.234.224.16-22``)."""
    return _UNSAFE.sub("-", f"{profile.name}-{profile.address}").strip("-.")
