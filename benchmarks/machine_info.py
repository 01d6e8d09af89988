"""What every benchmark records about the machine it ran on (stdlib only: importing it loads nothing heavy)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

INT8_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 "flags", arm "Features"); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    found: set[str] = set()
    for line in text.splitlines():
        if line.lower().startswith(("flags", "features")):
            found.update(line.split(":", 1)[1].split())
    return found


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())


def machine_summary() -> dict[str, Any]:
    """CPU model, whether it has VNNI (INT8 dot products: the U8S8 kernels differ without), cores, Python."""
    flags = cpu_flags()
    return {"cpu": cpu_model(), "vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
            "int8_flags": [flag for flag in INT8_CPU_FLAGS if flag in flags], "cores": os.cpu_count(),
            "python": platform.python_version(), "load_average": [round(v, 2) for v in os.getloadavg()]}
