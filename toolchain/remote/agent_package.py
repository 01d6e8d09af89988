"""The target-side package (toolchain/agent/) as the host ships it: files, one content-addressed zip, bootstrap.

The host reads these files as data and never imports them. A target gets the package once per version:
the bootstrap (toolchain/agent/bootstrap.py, sent with the command) says whether
``<workdir>/.toolchain/agent-<sha12>/`` is there, and installs it from the zip on stdin when it is not;
every operation then runs by path (``python3 <dir>/helper.py OP ...``), so no command line carries more
than the bootstrap and no SFTP is needed. The preflight (`facts`) runs before anything is installed,
as a program on stdin.
"""

from __future__ import annotations

import functools
import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

AGENT_DIR = Path(__file__).resolve().parents[1] / "agent"
COMMON = "common.py"
HELPER = "helper.py"
BENCH_AGENT = "bench_agent.py"
PROFILE_AGENT = "profile_agent.py"
BOOTSTRAP = "bootstrap.py"
SHIPPED = (COMMON, HELPER, BENCH_AGENT, PROFILE_AGENT)
# host copies of the helper's constants (tests/test_remote_helper.py checks that they agree)
UPLOAD_PREFIX = ".tc-upload-"
EXIT_BUSY = 3
# a fixed time stamp: the zip's bytes, hence its hash, depend on the files' content only
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

# Runs a script of the package from stdin (`python3 - ARGS`) with its siblings importable, writing nothing.
_STDIN_PROGRAM = """import sys, types
for name, source in {sources!r}:
    module = types.ModuleType(name)
    module.__file__ = name + ".py"
    sys.modules[name] = module
    exec(compile(source, name + ".py", "exec"), module.__dict__)
sys.exit(sys.modules[{main!r}].main(sys.argv[1:]))
"""


@dataclass(frozen=True)
class AgentPackage:
    """The zip of the shipped files and its sha256 (the name of its folder on a target)."""

    archive: bytes
    sha256: str

    @property
    def folder_name(self) -> str:
        return f"agent-{self.sha256[:12]}"


@functools.lru_cache(maxsize=1)
def agent_package() -> AgentPackage:
    """The package of this installation (built once per process)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name in SHIPPED:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            archive.writestr(info, (AGENT_DIR / name).read_bytes())
    data = buffer.getvalue()
    return AgentPackage(data, hashlib.sha256(data).hexdigest())


@functools.lru_cache(maxsize=1)
def bootstrap_source() -> str:
    """The bootstrap's code without its comment lines (what goes on the command line)."""
    lines = (AGENT_DIR / BOOTSTRAP).read_text().splitlines()
    return "\n".join(line for line in lines if not line.startswith("#")) + "\n"


def bootstrap_command(python: str, workdir: str, install: bool = False) -> list[str]:
    """The bootstrap's argument vector: report the package folder under `workdir`, or install it (stdin)."""
    return [python, "-c", bootstrap_source(), workdir, agent_package().sha256, *(["install"] if install else [])]


def stdin_program(script: str) -> bytes:
    """A program for `python3 -` that runs `script`'s main() with the package's modules loaded from memory."""
    sources = tuple((name.removesuffix(".py"), (AGENT_DIR / name).read_text()) for name in (COMMON, script))
    return _STDIN_PROGRAM.format(sources=sources, main=script.removesuffix(".py")).encode()
