"""Preflight: what the target is (arch, OS, Python, glibc, CPU, disk, onnxruntime) and whether it can run.

The checks are rows of one table; a row with status "fail" stops the deploy before anything is
written, with a message saying which fact does not fit and what to do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from toolchain.errors import TargetIncompatibleError
from toolchain.remote.session import TargetFacts, format_mb
from toolchain.remote.target import ANY_ARCH, TargetProfile

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"
# the agent and the helper are written for Python 3.5 (a stock Ubuntu 16.04 Bluebox)
MIN_PYTHON = (3, 5)
_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64"}


@dataclass(frozen=True)
class Check:
    """One row of the preflight table."""

    name: str
    value: str
    status: str
    note: str = ""
    hint: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _arch(name: str) -> str:
    return _ARCH_ALIASES.get(name.lower(), name.lower())


def _runtime_value(version: str | None, error: str | None) -> str:
    if version:
        return version
    return f"missing ({error})" if error else "missing"


def preflight_checks(facts: TargetFacts, profile: TargetProfile, needed_bytes: int) -> list[Check]:
    """The table rows for these facts against the profile; `needed_bytes` is what the deploy will write."""
    checks = []
    any_arch = profile.arch == ANY_ARCH
    arch_ok = any_arch or _arch(facts.arch) == _arch(profile.arch)
    checks.append(Check("arch", facts.arch, OK if arch_ok else FAIL,
                        "profile: any (taken from the target)" if any_arch else f"profile: {profile.arch}",
                        "" if arch_ok else f"pick the profile of this machine with --target, or correct arch "
                                           f"in {profile.source or 'the profile'}"))
    checks.append(Check("os", f"{facts.os} (kernel {facts.kernel})", INFO))
    python_ok = facts.python_version >= MIN_PYTHON
    checks.append(Check("python", f"{facts.python} ({facts.python_executable})", OK if python_ok else FAIL,
                        "needs 3.5 or newer",
                        "" if python_ok else "install Python 3.5+ on the target and set python in the profile"))
    checks.append(Check("glibc", facts.glibc or "none", OK if facts.glibc else WARN,
                        "decides which manylinux wheels fit" if facts.glibc else "manylinux wheels need glibc"))
    cpu = f"{facts.cpu_model} x {facts.cores}"
    expected = " x ".join(str(part) for part in (profile.cpu, profile.cores) if part)
    cpu_ok = (not profile.cpu or profile.cpu.lower() in facts.cpu_model.lower()) and \
        (not profile.cores or profile.cores == facts.cores)
    note = f"profile: {expected}" if expected else ""
    if profile.emulated:
        note = (note + "; " if note else "") + "emulated: fake cpuinfo, the host's cores"
    checks.append(Check("cpu", cpu, OK if cpu_ok else WARN, note))
    margin = profile.min_free_mb << 20
    disk_ok = facts.free_bytes >= needed_bytes + margin
    checks.append(Check("disk", f"{format_mb(facts.free_bytes)} free in {facts.free_path}", OK if disk_ok else FAIL,
                        f"needs {format_mb(needed_bytes)} + {profile.min_free_mb} MB",
                        "" if disk_ok else "free space on the target, deploy with --clean, or set another workdir"))
    checks.append(Check("workdir", facts.workdir, OK if facts.writable else FAIL,
                        "exists" if facts.workdir_exists else "will be created",
                        "" if facts.writable else f"make {facts.free_path} writable for the login user or set "
                                                  "another workdir"))
    system = facts.system_runtime
    checks.append(Check("onnxruntime", _runtime_value(system.onnxruntime, system.onnxruntime_error),
                        INFO, f"system; profile wants {profile.onnxruntime}"))
    checks.append(Check("numpy", _runtime_value(system.numpy, system.numpy_error), INFO,
                        f"system; profile wants {profile.numpy}"))
    return checks


def require_passed(checks: list[Check], target: str) -> None:
    """Raise TargetIncompatibleError for the first failed row."""
    for check in checks:
        if check.status == FAIL:
            raise TargetIncompatibleError(f"{target} fails the {check.name} check: {check.value} ({check.note})",
                                          check.hint or "see the preflight table above")
