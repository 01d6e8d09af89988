"""Offline provisioning: onnxruntime and numpy wheels that fit the target, fetched by the host.

The target usually has no internet. The host lists the package index, picks the newest wheel (or the
pinned version) whose tags the target accepts -- CPython version and ABI, the manylinux glibc level
against the target's glibc, the architecture -- downloads it with `pip download` and the exact
platform tags, and uploads it; the target unpacks it into a private folder
`<workdir>/runtime/<name>/` that the agent runs with on PYTHONPATH. When nothing fits, it refuses
and says why (e.g. a stock Ubuntu 16.04 Bluebox: Python 3.5, glibc 2.23).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from toolchain.errors import CommandFailedError, ProvisioningError
from toolchain.fsutil import atomic_write_bytes
from toolchain.hashing import sha256_file
from toolchain.fsutil import cache_root
from toolchain.remote.session import LocalFile, ProvisionedRuntime, TargetFacts, TargetSession, UploadProgress

ONNXRUNTIME = "onnxruntime"
NUMPY = "numpy"
NEWEST = "newest"
DEFAULT_INDEX = os.environ.get("TOOLCHAIN_INDEX_URL", "https://pypi.org/simple")
INDEX_MAX_AGE_S = 6 * 3600
# beside --wheels files: their sha256 (`sha256sum *.whl > SHA256SUMS`); in the cache: the hashes of
# downloads the index published none for, recorded on first download
SUMS_FILE = "SHA256SUMS"
LOCK_FILE = "wheels.lock"
# onnxruntime wheels before 1.19 were built against numpy 1.x and fail to import with numpy 2
# (microsoft/onnxruntime#21063, fixed in 1.19.0); their metadata does not say so.
FIRST_ORT_FOR_NUMPY2 = Version("1.19")
# an unpacked wheel takes about this many times its size on disk (checked before uploading)
UNPACKED_FACTOR = 4
_MANYLINUX_FLOOR = {"x86_64": 5, "i686": 5}
_LEGACY_MANYLINUX = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}

Messages = Callable[[str], None]


# --- what the target accepts ------------------------------------------------------------------


@dataclass(frozen=True)
class TargetPlatform:
    """The three facts a binary wheel has to fit: CPython version, glibc, architecture."""

    python: tuple[int, int]
    glibc: tuple[int, int] | None
    arch: str

    @classmethod
    def from_facts(cls, facts: TargetFacts) -> "TargetPlatform":
        arch = "aarch64" if facts.arch == "arm64" else facts.arch
        return cls(facts.python_version, facts.glibc_version, arch)

    @property
    def abi(self) -> str:
        """CPython's ABI tag: 3.5-3.7 carry the pymalloc "m"."""
        return f"cp{self.python[0]}{self.python[1]}{'m' if self.python < (3, 8) else ''}"

    @property
    def python_tag(self) -> str:
        return f"cp{self.python[0]}{self.python[1]}"

    def describe(self) -> str:
        glibc = f"glibc {self.glibc[0]}.{self.glibc[1]}" if self.glibc else "no glibc"
        return f"CPython {self.python[0]}.{self.python[1]}, {glibc}, {self.arch}"


def manylinux_platforms(glibc: tuple[int, int] | None, arch: str) -> list[str]:
    """Platform tags a glibc system accepts, best first (manylinux_2_N down to the oldest, legacy aliases)."""
    if glibc is None or glibc[0] != 2:
        return []
    platforms = []
    for minor in range(glibc[1], _MANYLINUX_FLOOR.get(arch, 17) - 1, -1):
        platforms.append(f"manylinux_2_{minor}_{arch}")
        legacy = _LEGACY_MANYLINUX.get((2, minor))
        if legacy and (legacy == "manylinux2014" or arch in _MANYLINUX_FLOOR):
            platforms.append(f"{legacy}_{arch}")
    return platforms


def supported_tags(platform: TargetPlatform) -> list[Tag]:
    """Every wheel tag the target's interpreter accepts, in pip's order of preference."""
    platforms = manylinux_platforms(platform.glibc, platform.arch)
    return [*cpython_tags(platform.python, abis=[platform.abi], platforms=platforms),
            *compatible_tags(platform.python, platform.python_tag, platforms)]


# --- wheels -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WheelFile:
    """One wheel file of a package, as the index lists it."""

    filename: str
    name: str
    version: Version
    tags: frozenset[Tag]
    url: str = ""
    sha256: str = ""
    size: int = 0

    @classmethod
    def parse(cls, filename: str, url: str = "", sha256: str = "", size: int = 0) -> "WheelFile | None":
        """None for anything that is not a wheel with a valid name."""
        if not filename.endswith(".whl"):
            return None
        try:
            name, version, _build, tags = parse_wheel_filename(filename)
        except (InvalidWheelFilename, InvalidVersion):
            return None
        return cls(filename, str(name), version, tags, url, sha256, size)

    @property
    def platforms(self) -> list[str]:
        return sorted({tag.platform for tag in self.tags})

    @property
    def abis(self) -> list[str]:
        return sorted({tag.abi for tag in self.tags})

    def min_glibc(self) -> tuple[int, int] | None:
        """The oldest glibc any of its manylinux tags needs (None: not a manylinux wheel)."""
        needed = []
        for platform in self.platforms:
            parts = platform.split("_")
            if platform.startswith("manylinux_") and len(parts) >= 4:
                needed.append((int(parts[1]), int(parts[2])))
            for glibc, legacy in _LEGACY_MANYLINUX.items():
                if platform.startswith(legacy + "_"):
                    needed.append(glibc)
        return min(needed) if needed else None


def _rank(wheel: WheelFile, priority: dict[Tag, int]) -> int | None:
    ranks = [priority[tag] for tag in wheel.tags if tag in priority]
    return min(ranks) if ranks else None


def select_wheel(package: str, files: Iterable[WheelFile], platform: TargetPlatform, *,
                 version: str | None = None, specifier: SpecifierSet | None = None) -> WheelFile:
    """The newest wheel of `package` (or of the pinned `version`) whose tags the target accepts.

    Pre-releases are only taken when pinned. Raises ProvisioningError saying what does not fit.
    """
    files = list(files)
    priority = {tag: index for index, tag in enumerate(supported_tags(platform))}
    candidates = [wheel for wheel in files if canonicalize_name(wheel.name) == canonicalize_name(package)
                  and _wanted(wheel.version, version, specifier)]
    fitting = [(wheel, _rank(wheel, priority)) for wheel in candidates]
    fitting = [(wheel, rank) for wheel, rank in fitting if rank is not None]
    if fitting:
        return max(fitting, key=lambda pair: (pair[0].version, -pair[1]))[0]
    reason, hint = no_wheel_reason(package, candidates, platform, version, specifier)
    if version is not None:
        try:
            best = select_wheel(package, files, platform, specifier=specifier)
            hint = (f"the newest {package} that fits this target is {best.version}: set {package} = "
                    f'"{best.version}" in the target profile (or --{package} {best.version})')
        except ProvisioningError:
            pass
    raise ProvisioningError(reason, hint)


def _wanted(found: Version, version: str | None, specifier: SpecifierSet | None) -> bool:
    if version is not None:
        return found == Version(version)
    if found.is_prerelease or found.is_devrelease:
        return False
    return specifier is None or specifier.contains(found)


def _span(abis: Iterable[str]) -> str:
    def key(abi: str) -> tuple[int, int, str]:
        match = re.match(r"cp(\d)(\d+)(\D*)$", abi)
        return (int(match.group(1)), int(match.group(2)), match.group(3)) if match else (0, 0, abi)

    ordered = sorted(set(abis), key=key)
    return ordered[0] if len(ordered) == 1 else f"{ordered[0]}..{ordered[-1]}"


def no_wheel_reason(package: str, candidates: Sequence[WheelFile], platform: TargetPlatform,
                    version: str | None, specifier: SpecifierSet | None) -> tuple[str, str]:
    """What rules out every candidate (architecture, Python or glibc), and what to do about it."""
    wanted = f"{package} {version}" if version else f"{package}{specifier or ''}"
    newer_python = ("install a newer CPython on the target (see targets/bluebox2/README.md) and point python at "
                    "it in the target profile")
    if not candidates:
        return f"the index has no wheel of {wanted}", "check the version (or the --wheels folder)"
    on_arch = [wheel for wheel in candidates if any(tag.platform.endswith("_" + platform.arch)
                                                    for tag in wheel.tags)]
    if not on_arch:
        return (f"{wanted} has no {platform.arch} wheels (the target is {platform.describe()})",
                f"install {package} on the target yourself, or check arch in the target profile")
    interpreters = {(tag.interpreter, tag.abi) for tag in supported_tags(
        TargetPlatform(platform.python, (2, 17), platform.arch))}
    for_python = [wheel for wheel in on_arch if any((tag.interpreter, tag.abi) in interpreters for tag in wheel.tags)]
    if not for_python:
        abis = {tag.abi for wheel in on_arch for tag in wheel.tags}
        newest = max(wheel.version for wheel in on_arch)
        return (f"{wanted} has {platform.arch} wheels for {_span(abis)} (newest {newest}) but none for "
                f"{platform.abi}: the target runs CPython {platform.python[0]}.{platform.python[1]}", newer_python)
    needs = [glibc for glibc in (wheel.min_glibc() for wheel in for_python) if glibc is not None]
    if needs and platform.glibc is not None and min(needs) > platform.glibc:
        oldest = min(needs)
        return (f"{wanted} {platform.arch} wheels for CPython {platform.python[0]}.{platform.python[1]} need "
                f"glibc >= {oldest[0]}.{oldest[1]}; the target has glibc {platform.glibc[0]}.{platform.glibc[1]}",
                "pin an older version in the target profile, or use a target with a newer glibc")
    return f"no wheel of {wanted} fits the target ({platform.describe()})", newer_python


# --- the package index and the wheel cache ----------------------------------------------------


class WheelIndex:
    """Wheel listings from a PEP 691 index (cached for a few hours) and wheel files in a local cache.

    With `wheel_dir` (an air-gapped host's folder of wheels) the index is not contacted at all.
    """

    def __init__(self, cache_dir: Path | None = None, index_url: str = DEFAULT_INDEX,
                 wheel_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir or cache_root() / "wheels"
        self.index_url = index_url.rstrip("/")
        self.wheel_dir = wheel_dir

    def _local(self) -> list[WheelFile]:
        folders = [self.wheel_dir] if self.wheel_dir is not None else [self.cache_dir]
        found = []
        for folder in folders:
            for path in sorted(folder.glob("*.whl")) if folder.is_dir() else []:
                wheel = WheelFile.parse(path.name, url=path.as_uri())
                if wheel is not None:
                    found.append(wheel)
        return found

    def files(self, package: str) -> list[WheelFile]:
        """Every wheel of `package` known to the index (or only the local folder's, offline)."""
        if self.wheel_dir is not None:
            if not self.wheel_dir.is_dir():
                raise ProvisioningError(f"wheel folder {self.wheel_dir} does not exist",
                                        "pass --wheels with a folder of .whl files")
            return self._local()
        listing = self._listing(package)
        known = {wheel.filename for wheel in listing}
        return listing + [wheel for wheel in self._local() if wheel.filename not in known]

    def _listing(self, package: str) -> list[WheelFile]:
        cached = self.cache_dir / "index" / f"{canonicalize_name(package)}.json"
        document = None
        if cached.is_file() and time.time() - cached.stat().st_mtime < INDEX_MAX_AGE_S:
            document = json.loads(cached.read_text())
        else:
            request = urllib.request.Request(f"{self.index_url}/{canonicalize_name(package)}/",
                                             headers={"Accept": "application/vnd.pypi.simple.v1+json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    payload = response.read()
                document = json.loads(payload)
                atomic_write_bytes(cached, payload)
            except (urllib.error.URLError, OSError, ValueError):
                if cached.is_file():  # stale but better than nothing when the index is unreachable
                    document = json.loads(cached.read_text())
        if document is None:
            return []
        wheels = []
        for item in document.get("files", []):
            if item.get("yanked"):
                continue
            wheel = WheelFile.parse(item["filename"], item.get("url", ""), item.get("hashes", {}).get("sha256", ""),
                                    int(item.get("size") or 0))
            if wheel is not None:
                wheels.append(wheel)
        return wheels

    def fetch(self, wheel: WheelFile, platform: TargetPlatform) -> Path:
        """The wheel file, checked against a sha256: the index's, the lock file's, or the folder's SHA256SUMS."""
        if self.wheel_dir is not None:
            return self._checked_local(wheel.filename)
        path = self.cache_dir / wheel.filename
        lock = self.cache_dir / LOCK_FILE
        expected = wheel.sha256 or read_sums(lock).get(wheel.filename, "")
        if path.is_file() and expected and sha256_file(path) == expected:
            return path
        downloaded_hash = self._download(wheel, platform, path, expected)
        if not expected:  # trust on first download: the lock file pins this file from now on
            record_sum(lock, wheel.filename, downloaded_hash)
        return path

    def _checked_local(self, filename: str) -> Path:
        assert self.wheel_dir is not None
        path, sums_file = self.wheel_dir / filename, self.wheel_dir / SUMS_FILE
        expected = read_sums(sums_file).get(filename)
        hint = f"list the wheels' hashes beside them: (cd {self.wheel_dir} && sha256sum *.whl > {SUMS_FILE})"
        if expected is None:
            raise ProvisioningError(f"{sums_file} lists no sha256 for {filename}" if sums_file.is_file()
                                    else f"the wheel folder {self.wheel_dir} has no {SUMS_FILE}", hint)
        if sha256_file(path) != expected:
            raise ProvisioningError(f"{path} does not match its sha256 in {sums_file}",
                                    "the file changed since SHA256SUMS was written: fetch it again from a source "
                                    "you trust")
        return path

    def _download(self, wheel: WheelFile, platform: TargetPlatform, path: Path, expected: str) -> str:
        """`pip download` with the target's tags into the cache; returns the file's sha256 (checked if known)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=".download-") as folder:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                       "--disable-pip-version-check", "--quiet", "--dest", folder, "--index-url", self.index_url,
                       "--implementation", "cp", "--python-version", f"{platform.python[0]}.{platform.python[1]}",
                       *(arg for abi in wheel.abis for arg in ("--abi", abi)),
                       *(arg for tag in wheel.platforms for arg in ("--platform", tag)),
                       f"{wheel.name}=={wheel.version}"]
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=900)
            except subprocess.TimeoutExpired:
                raise ProvisioningError(f"pip download of {wheel.filename} took more than 15 minutes",
                                        "check the connection to the package index") from None
            downloaded = Path(folder) / wheel.filename
            if result.returncode != 0 or not downloaded.is_file():
                detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
                raise ProvisioningError(f"pip download of {wheel.filename} failed: {detail}",
                                        "check the connection to the package index (or use --wheels DIR)")
            digest = sha256_file(downloaded)
            if expected and digest != expected:
                source = "its published sha256" if wheel.sha256 else f"its sha256 in {self.cache_dir / LOCK_FILE}"
                raise ProvisioningError(f"{wheel.filename} from the index does not match {source}",
                                        "retry; if it persists, the index or a proxy serves a different file")
            os.replace(downloaded, path)
        return digest


def read_sums(path: Path) -> dict[str, str]:
    """A `sha256sum` listing (`<hex>  <name>`, or `<hex> *<name>`) as name -> hex; {} when there is none."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    sums = {}
    for line in lines:
        match = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", line.strip())
        if match:
            sums[match.group(2).strip()] = match.group(1).lower()
    return sums


def record_sum(path: Path, filename: str, digest: str) -> None:
    """Add one wheel's sha256 to the lock file (same format as SHA256SUMS)."""
    sums = {**read_sums(path), filename: digest}
    atomic_write_bytes(path, "".join(f"{value}  {name}\n" for name, value in sorted(sums.items())).encode())


def numpy_requirement(onnxruntime_wheel: Path, ort_version: Version) -> SpecifierSet:
    """The numpy versions an onnxruntime wheel works with: its Requires-Dist, plus <2 before 1.19."""
    specifier = SpecifierSet()
    with zipfile.ZipFile(onnxruntime_wheel) as archive:
        metadata = next((name for name in archive.namelist() if name.endswith(".dist-info/METADATA")), None)
        lines = archive.read(metadata).decode(errors="replace").splitlines() if metadata else []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        try:
            requirement = Requirement(line.split(":", 1)[1].strip())
        except InvalidRequirement:
            continue
        if canonicalize_name(requirement.name) == NUMPY and (
                requirement.marker is None or requirement.marker.evaluate({"extra": ""})):
            specifier &= requirement.specifier
    if ort_version < FIRST_ORT_FOR_NUMPY2:
        specifier &= SpecifierSet("<2")
    return specifier


# --- choosing and installing the runtime ------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """The onnxruntime + numpy the agent runs with on the target."""

    onnxruntime: str
    numpy: str
    pythonpath: str | None
    source: str  # "system", "provisioned earlier" or "provisioned now"
    wheels: tuple[str, ...] = ()

    def env(self) -> dict[str, str]:
        """Environment for target commands that must see this runtime."""
        return {"PYTHONPATH": self.pythonpath} if self.pythonpath else {}

    def to_dict(self) -> dict:
        return {"onnxruntime": self.onnxruntime, "numpy": self.numpy, "pythonpath": self.pythonpath,
                "source": self.source, "wheels": list(self.wheels)}


def _accepts(wanted: str, found: str | None) -> bool:
    return found is not None and (wanted == NEWEST or Version(found) == Version(wanted))


def existing_runtime(facts: TargetFacts, onnxruntime: str, numpy: str) -> Runtime | None:
    """A runtime already on the target that satisfies the pins: the system's, else a provisioned one."""
    system = facts.system_runtime
    if _accepts(onnxruntime, system.onnxruntime) and _accepts(numpy, system.numpy):
        return Runtime(system.onnxruntime or "", system.numpy or "", None, "system")
    platform = TargetPlatform.from_facts(facts)
    matches: list[ProvisionedRuntime] = [
        runtime for runtime in facts.runtimes
        if runtime.python_tag == platform.abi and _accepts(onnxruntime, runtime.onnxruntime)
        and _accepts(numpy, runtime.numpy or system.numpy)]
    if not matches:
        return None
    best = max(matches, key=lambda runtime: Version(runtime.onnxruntime))
    return Runtime(best.onnxruntime, best.numpy or system.numpy or "", best.directory, "provisioned earlier",
                   best.wheels)


def plan_wheels(facts: TargetFacts, onnxruntime: str, numpy: str, index: WheelIndex,
                on_message: Messages = lambda _: None) -> tuple[WheelFile, WheelFile | None, list[Path]]:
    """Pick and fetch the wheels to provision: onnxruntime, and numpy unless the system's fits."""
    platform = TargetPlatform.from_facts(facts)
    if platform.glibc is None:
        raise ProvisioningError(f"the target reports no glibc ({facts.os}); manylinux wheels need one",
                                "install onnxruntime and numpy on the target by hand")
    pinned = None if onnxruntime == NEWEST else onnxruntime
    ort_wheel = select_wheel(ONNXRUNTIME, index.files(ONNXRUNTIME), platform, version=pinned)
    on_message(f"fetching {ort_wheel.filename}")
    paths = [index.fetch(ort_wheel, platform)]
    needs = numpy_requirement(paths[0], ort_wheel.version)
    system_numpy = facts.system_runtime.numpy
    if numpy == NEWEST and system_numpy and needs.contains(Version(system_numpy), prereleases=True):
        return ort_wheel, None, paths
    if numpy != NEWEST and not needs.contains(Version(numpy), prereleases=True):
        raise ProvisioningError(f"numpy {numpy} does not fit onnxruntime {ort_wheel.version} (it needs numpy{needs})",
                                f"pin a numpy version that matches {needs}, or numpy = \"newest\"")
    numpy_wheel = select_wheel(NUMPY, index.files(NUMPY), platform,
                               version=None if numpy == NEWEST else numpy, specifier=needs)
    on_message(f"fetching {numpy_wheel.filename}")
    paths.append(index.fetch(numpy_wheel, platform))
    return ort_wheel, numpy_wheel, paths


def provision_runtime(session: TargetSession, onnxruntime: str, numpy: str, index: WheelIndex, *,
                      on_message: Messages = lambda _: None, on_progress: UploadProgress | None = None) -> Runtime:
    """Install onnxruntime (+ numpy) wheels into a private folder on the target; returns that runtime."""
    facts = session.require_facts()
    platform = TargetPlatform.from_facts(facts)
    ort_wheel, numpy_wheel, paths = plan_wheels(facts, onnxruntime, numpy, index, on_message)
    numpy_version = str(numpy_wheel.version) if numpy_wheel else (facts.system_runtime.numpy or "")
    name = f"onnxruntime-{ort_wheel.version}_numpy-{numpy_wheel.version if numpy_wheel else 'system'}_{platform.abi}"
    runtime_root = session.remote_path("runtime")
    files = [LocalFile(path.name, path, sha256_file(path), path.stat().st_size) for path in paths]
    unpacked = sum(item.size for item in files) * UNPACKED_FACTOR
    session.require_space(unpacked + sum(item.size for item in files), facts.free_bytes,
                          f"onnxruntime {ort_wheel.version} + numpy {numpy_version}")
    on_message(f"uploading {len(files)} wheel(s) to {runtime_root}")
    session.upload(files, runtime_root, what="the runtime wheels", on_progress=on_progress)
    marker = json.dumps({"onnxruntime": str(ort_wheel.version), "numpy": numpy_wheel and str(numpy_wheel.version),
                         "python_tag": platform.abi, "wheels": [item.name for item in files],
                         "sha256": {item.name: item.sha256 for item in files}})
    on_message(f"unpacking the wheels on the target into {runtime_root}/{name}")
    try:
        session.helper("install-runtime", f"{runtime_root}/{name}", marker,
                       *(f"{runtime_root}/{item.name}" for item in files), label="installing the runtime")
    except CommandFailedError as error:
        reason = error.stderr.strip().splitlines()[-1].removeprefix("error: ") if error.stderr.strip() else error.message
        raise ProvisioningError(f"unpacking the wheels on {session.target} failed: {reason}",
                                "nothing was installed; use wheels from the package index (or check --wheels)") from None
    return Runtime(str(ort_wheel.version), numpy_version, f"{runtime_root}/{name}", "provisioned now",
                   tuple(item.name for item in files))
