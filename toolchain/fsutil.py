"""Writing files so that a failure never leaves a half-written result behind."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from toolchain.errors import ArtifactError


# a full, read-only or forbidden disk: the user's to fix, whichever library's call met it
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
DISK_HINT = ("free space or fix permissions there (the artifact store: --artifacts; the pass cache: "
             "TOOLCHAIN_PASS_CACHE; temporary files: TMPDIR) and rerun")


def disk_error(exc: BaseException, hint: str = DISK_HINT, path: Path | None = None) -> ArtifactError | None:
    """An OS error of a full, read-only or unwritable disk as one error naming the file (None: another error).

    `path`: the file the caller was writing, for errors that name none (a library's write()).
    """
    if not isinstance(exc, OSError) or exc.errno not in DISK_ERRNOS:
        return None
    name = exc.filename2 if exc.filename2 is not None else exc.filename if exc.filename is not None else path
    where = f"cannot write {os.fsdecode(name)}" if name is not None else "cannot write a file"
    return ArtifactError(f"{where}: {exc.strerror or exc}", hint)


def cache_root() -> Path:
    """Where downloads, built images and cached passes are kept between runs: $TOOLCHAIN_CACHE or ~/.cache/toolchain.

    Not created here. Holds the aarch64 wheels, the emulated Bluebox's root filesystem and the pass cache.
    """
    return Path(os.environ.get("TOOLCHAIN_CACHE") or "~/.cache/toolchain").expanduser()


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` if needed and check we can write into it, or fail with a clear error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot create {what} {path}: {exc.strerror or exc}",
                            "choose a folder you can write to") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ArtifactError(f"{what} {path} is not writable", "choose a folder you can write to")
    return path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the result the permissions a plain open() would
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value: Any) -> None:
    """JSON (indented, sorted keys) written atomically."""
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode())


STAGING_PREFIX = ".staging-"


@contextlib.contextmanager
def staging_folder(root: Path, where: str = "--artifacts") -> Iterator[Path]:
    """A fresh folder inside ``root`` to build a result in, named after this process; removed if the block fails.

    A process killed before it could clean up leaves its folder behind: `sweep_stale_staging` removes
    those whose process is gone. A full or unwritable disk met inside the block ends as one ArtifactError
    naming the file (`where` says how to choose another folder).
    """
    ensure_writable_dir(root, "artifact folder")
    try:
        folder = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=root))
    except OSError as exc:
        raise ArtifactError(f"cannot write to {root}: {exc.strerror or exc}",
                            f"choose a folder you can write to ({where})") from None
    try:
        yield folder
    except BaseException as exc:
        shutil.rmtree(folder, ignore_errors=True)
        failure = disk_error(exc, f"free space in {root} (or choose another folder: {where}) and rerun; "
                                  "nothing was kept")
        if failure is not None:
            raise failure from None
        raise


def sweep_stale_staging(root: Path) -> list[Path]:
    """Remove staging folders under ``root`` left by processes of this machine that no longer run."""
    removed = []
    for folder in root.glob(f"{STAGING_PREFIX}*") if root.is_dir() else ():
        pid_text = folder.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or process_alive(int(pid_text)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process of this machine runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = Path(f"/proc/{pid}/stat")
    try:
        # a zombie is dead for our purpose (its parent just has not collected it yet)
        return state.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
