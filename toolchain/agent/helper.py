"""Small operations the host asks the target to do: facts, lock, verified commit, runtime install, probe.

Runs ON THE TARGET as `python3 <agent dir>/helper.py OPERATION ARGS...` from the folder the host
installed once per version (toolchain.remote.agent_package); `facts`, the preflight, runs from stdin
before anything is installed. Python 3.5 (a stock Ubuntu 16.04 Bluebox), the standard library and
its sibling `common` only: no f-strings, no annotations (onnxruntime only inside `probe`, which runs
with the provisioned runtime on PYTHONPATH). Each operation prints one JSON document on stdout; a
failure prints one line on stderr and exits non-zero.
"""

import base64
import errno
import fcntl
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import zipfile

import common

UPLOAD_PREFIX = ".tc-upload-"
RUNTIME_MARKER = ".toolchain-runtime.json"
ARTIFACT_DIR = re.compile(r"^[0-9a-f]{16}$")
EXIT_BUSY = 3

IMPORT_CHECK = """
import json
info = {}
try:
    import numpy
    info["numpy"] = numpy.__version__
except Exception as exc:
    info["numpy_error"] = "%s: %s" % (type(exc).__name__, exc)
try:
    import onnxruntime
    info["onnxruntime"] = onnxruntime.__version__
    info["onnxruntime_path"] = onnxruntime.__file__
except Exception as exc:
    info["onnxruntime_error"] = "%s: %s" % (type(exc).__name__, exc)
print(json.dumps(info))
"""


class Refused(Exception):
    """A failure to report as one line on stderr."""


def emit(value):
    sys.stdout.write(json.dumps(value, sort_keys=True) + "\n")
    sys.stdout.flush()


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def existing_ancestor(path):
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def import_check(pythonpath):
    """Import numpy and onnxruntime in a child process (a crash there must not take us down)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    child = subprocess.Popen([sys.executable, "-c", IMPORT_CHECK], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
    try:
        out, err = child.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return {"onnxruntime_error": "import did not finish within 600 s"}
    if child.returncode < 0:
        return {"onnxruntime_error": "import crashed with signal %d" % -child.returncode}
    try:
        return json.loads(out.decode("utf-8", "replace"))
    except ValueError:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        return {"onnxruntime_error": lines[-1] if lines else "import failed (exit %d)" % child.returncode}


def op_facts(workdir):
    workdir = os.path.abspath(os.path.expanduser(workdir))
    measured = existing_ancestor(workdir)
    usage = shutil.disk_usage(measured)
    runtimes = []
    runtime_root = os.path.join(workdir, "runtime")
    if os.path.isdir(runtime_root):
        for name in sorted(os.listdir(runtime_root)):
            marker = os.path.join(runtime_root, name, RUNTIME_MARKER)
            if os.path.isfile(marker):
                try:
                    with open(marker) as handle:
                        runtimes.append({"dir": os.path.join(runtime_root, name), "marker": json.load(handle)})
                except ValueError:
                    continue
    emit({"hostname": socket.gethostname(), "arch": platform.machine(), "os": common.os_name(),
          "kernel": platform.release(), "python": platform.python_version(),
          "python_executable": sys.executable, "glibc": common.glibc_version(), "cpu_model": common.cpu_model(),
          "cores": os.cpu_count(), "workdir": workdir, "workdir_exists": os.path.isdir(workdir),
          "free_bytes": usage.free, "free_path": measured, "writable": os.access(measured, os.W_OK),
          "system_runtime": import_check(None), "runtimes": runtimes})


def try_flock(fd):
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (IOError, OSError) as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        return False
    return True


def lock_record(fd):
    """What the lock file says of its holder, with the age of its last heartbeat (the file's mtime)."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        record = json.loads(os.read(fd, 65536).decode("utf-8", "replace") or "{}")
    except ValueError:
        record = {}
    record = record if isinstance(record, dict) else {}
    record["heartbeat_age_s"] = round(time.time() - os.fstat(fd).st_mtime, 1)
    return record


def is_lock_holder(pid, path):
    """Is `pid` a helper holding the lock on `path` (the only kind of process --break-lock stops)?"""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            args = handle.read().split(b"\0")
    except (IOError, OSError):
        return False
    return b"lock" in args and path.encode("utf-8") in args and any(arg.endswith(b"helper.py") for arg in args)


def break_lock(fd, path, record):
    """Stop the holder named in the lock file and take the lock (within 10 s); False if that is not possible."""
    pid = record.get("target_pid")
    if not isinstance(pid, int) or not is_lock_holder(pid, path):
        return False
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if try_flock(fd):
            return True
        time.sleep(0.1)
    return False


def hold_lock(path, lease):
    """Wait for stdin to close; with a lease, also end when no heartbeat byte came for `lease` seconds."""
    stdin = sys.stdin.fileno()
    while True:
        if lease > 0 and not select.select([stdin], [], [], lease)[0]:
            return "lease expired"
        if not os.read(stdin, 4096):
            return "released"
        os.utime(path, None)


def op_lock(path, holder, lease="0", mode="wait"):
    """Hold an exclusive lock on `path` until stdin closes, or until `lease` s pass without a heartbeat byte.

    The lock file records the holder (the host's JSON plus our pid here and the lease); its mtime is the
    last heartbeat. Busy: prints BUSY and that record. Mode "break": the holder is stopped first.
    """
    lease = float(lease)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    broken = None
    if not try_flock(fd):
        record = lock_record(fd)
        if mode != "break" or not break_lock(fd, path, record):
            sys.stdout.write("BUSY " + json.dumps(record, sort_keys=True) + "\n")
            sys.stdout.flush()
            sys.exit(EXIT_BUSY)
        broken = record
    record = json.loads(holder)
    record.update({"target_pid": os.getpid(), "lease_s": lease})
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(record, sort_keys=True).encode("utf-8"))
    os.fsync(fd)
    # a dropped connection closes our stdin or hangs us up: either way the lock goes with us
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(0))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stdout.write("LOCKED" + (" " + json.dumps(broken, sort_keys=True) if broken else "") + "\n")
    sys.stdout.flush()
    why = hold_lock(path, lease)
    os.ftruncate(fd, 0)
    os.close(fd)
    emit({"released": path, "why": why})


def op_prepare(directory, mode="create"):
    """List the folder's files with hashes, after dropping uploads a broken run left behind.

    mode "create" makes the folder first; "existing" only looks (a missing folder lists as empty).
    """
    exists = os.path.isdir(directory)
    if not exists and mode == "create":
        os.makedirs(directory)
        exists = True
    files, removed = {}, []
    for name in sorted(os.listdir(directory)) if exists else []:
        path = os.path.join(directory, name)
        if name.startswith(UPLOAD_PREFIX):
            os.remove(path)
            removed.append(name)
        elif os.path.isfile(path):
            files[name] = {"sha256": common.sha256_file(path), "bytes": os.path.getsize(path)}
    emit({"directory": directory, "exists": exists, "files": files, "removed_partial": removed,
          "free_bytes": shutil.disk_usage(existing_ancestor(directory)).free})


def op_commit(directory):
    """Verify each uploaded temporary file against its sha256, then rename it into place, in order.

    The first mismatch stops the commit and removes the remaining temporary files, so a file listed
    last (the deploy receipt) is only in place when everything before it is.
    """
    plan = json.loads(sys.stdin.read())
    committed, mismatched = [], []
    for position, item in enumerate(plan):
        temp = os.path.join(directory, item["temp"])
        actual = common.sha256_file(temp)
        if actual != item["sha256"]:
            mismatched.append({"name": item["final"], "expected": item["sha256"], "actual": actual})
            for rest in plan[position:]:
                if os.path.exists(os.path.join(directory, rest["temp"])):
                    os.remove(os.path.join(directory, rest["temp"]))
            break
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, os.path.join(directory, item["final"]))
        committed.append(item["final"])
    fsync_dir(directory)
    emit({"committed": committed, "mismatched": mismatched})


def op_remove(directory, *names):
    removed = []
    for name in names:
        if not name.startswith(UPLOAD_PREFIX) or "/" in name:
            raise Refused("refusing to remove %r: only upload leftovers are removed this way" % name)
        path = os.path.join(directory, name)
        if os.path.exists(path):
            os.remove(path)
            removed.append(name)
    emit({"removed": removed})


def tree_bytes(path):
    total = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def op_clean(workdir, keep):
    """Remove deployed artifact folders other than `keep` (runtimes and the lock stay)."""
    removed, freed = [], 0
    for name in sorted(os.listdir(workdir)):
        path = os.path.join(workdir, name)
        if ARTIFACT_DIR.match(name) and name != keep and os.path.isdir(path) and not os.path.islink(path):
            freed += tree_bytes(path)
            shutil.rmtree(path)
            removed.append(name)
    emit({"removed": removed, "freed_bytes": freed})


def safe_relative(path):
    """`path` as a relative path of plain components, or None where it is absolute, empty or climbs out."""
    parts = path.split("/")
    if not path or "\\" in path or "\0" in path or any(part in ("", ".", "..") for part in parts):
        return None
    return "/".join(parts)


def member_kind(info):
    """The Unix file type of a zip member ("file", "dir" or "other": a link, device or fifo)."""
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if info.filename.endswith("/") or kind == stat.S_IFDIR:
        return "dir"
    return "file" if kind in (0, stat.S_IFREG) else "other"


def wheel_members(archive):
    """(member, destination) pairs of a wheel, .data/purelib and .data/platlib mapped to the top.

    Every destination is checked after the prefix is stripped (a member ".data/purelib//etc/x" is as
    absolute as "/etc/x"); links and other special files are refused, never unpacked.
    """
    pairs = []
    for info in archive.infolist():
        member = info.filename
        kind = member_kind(info)
        if kind == "dir":
            continue
        if kind != "file":
            raise Refused("wheel member %r is a link or special file; refusing the wheel" % member)
        target = safe_relative(member)
        if target is None:
            raise Refused("wheel member %r escapes the install folder" % member)
        parts = target.split("/")
        if parts[0].endswith(".data"):
            if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                continue  # scripts, headers, data: not needed to import the package
            target = safe_relative(member.split("/", 2)[2])
            if target is None:
                raise Refused("wheel member %r escapes the install folder" % member)
        pairs.append((member, target))
    return pairs


def unpack_member(archive, member, root, target):
    """Write one member below `root`, never through a link and never outside it."""
    path = os.path.join(root, target)
    real_root = os.path.realpath(root)
    if not os.path.realpath(path).startswith(real_root + os.sep):
        raise Refused("wheel member %r escapes the install folder" % member)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with archive.open(member) as source, os.fdopen(fd, "wb") as sink:
        shutil.copyfileobj(source, sink, 1 << 20)


def op_install_runtime(destination, marker_json, *wheels):
    """Unpack verified wheels into a fresh folder, write the marker last, rename it into place."""
    staging = "%s.tmp-%d" % (destination, os.getpid())
    if os.path.exists(staging):
        shutil.rmtree(staging)
    os.makedirs(staging)
    try:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                for member, target in wheel_members(archive):
                    unpack_member(archive, member, staging, target)
        with open(os.path.join(staging, RUNTIME_MARKER), "w") as handle:
            handle.write(marker_json)
        if os.path.isdir(destination):
            shutil.rmtree(destination)
        os.rename(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        # a refused or half-unpacked wheel is not kept either: the next provisioning uploads it again
        for wheel in wheels:
            if os.path.exists(wheel):
                os.remove(wheel)
    emit({"installed": destination, "bytes": tree_bytes(destination)})


def op_probe():
    """Can this onnxruntime load models stamped with these IR versions and opsets? (stdin: models)"""
    request = json.loads(sys.stdin.read())
    import numpy
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # a fixed thread count: under emulation the CPU count is fake and setting affinity fails
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    results = {}
    for name, encoded in sorted(request["models"].items()):
        try:
            onnxruntime.InferenceSession(base64.b64decode(encoded), sess_options=options,
                                         providers=["CPUExecutionProvider"])
            results[name] = None
        except Exception as exc:
            results[name] = str(exc).strip().splitlines()[-1][-400:] if str(exc).strip() else type(exc).__name__
    emit({"onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
          "providers": onnxruntime.get_available_providers(), "results": results})


def op_free(path):
    measured = existing_ancestor(os.path.abspath(os.path.expanduser(path)))
    emit({"free_bytes": shutil.disk_usage(measured).free, "free_path": measured})


OPERATIONS = {"facts": op_facts, "lock": op_lock, "prepare": op_prepare, "commit": op_commit,
              "remove": op_remove, "clean": op_clean, "install-runtime": op_install_runtime,
              "probe": op_probe, "free": op_free}


def main(argv):
    if not argv or argv[0] not in OPERATIONS:
        sys.stderr.write("usage: helper {%s} ARGS...\n" % ",".join(sorted(OPERATIONS)))
        return 2
    try:
        OPERATIONS[argv[0]](*argv[1:])
    except (Refused, zipfile.BadZipFile) as exc:
        sys.stderr.write("error: %s\n" % exc)
        return 2
    except (IOError, OSError) as exc:
        sys.stderr.write("error: %s: %s\n" % (getattr(exc, "filename", None) or argv[0], exc.strerror or exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
