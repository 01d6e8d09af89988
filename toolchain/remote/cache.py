"""Where downloads and built images are kept between runs: $TOOLCHAIN_CACHE or ~/.cache/toolchain."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder (aarch64 wheels, the emulated Bluebox's root filesystem); not created here."""
    return Path(os.environ.get("TOOLCHAIN_CACHE") or "~/.cache/toolchain").expanduser()
