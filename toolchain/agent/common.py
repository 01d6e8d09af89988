"""What the target-side scripts share: file hashes, facts about the machine, JSON files, timed repeats, a CPU
onnxruntime session.

Target-side: Python 3.5+, standard library only (onnxruntime is imported by `cpu_session`, where it is called),
imported by its siblings as `import common` (the folder runs as it is, never as part of the host package).
"""

import hashlib
import json
import os
import platform
import sys
import tempfile
import time

# ARM's CPU part numbers (MIDR, implementer 0x41) of the cores an embedded target is likely to have:
# /proc/cpuinfo on arm64 has no "model name" line.
ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2",
    "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2",
}


def sha256_file(path):
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_text(path):
    """A text file's content, or "" when it cannot be read."""
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return ""


def cpu_model():
    """The CPU's name from /proc/cpuinfo: x86 "model name", or the ARM part number mapped to a core name."""
    fields = {}
    for line in read_text("/proc/cpuinfo").splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields.setdefault(key.strip().lower(), value.strip())
    if fields.get("model name"):
        return fields["model name"]
    part = fields.get("cpu part", "").lower()
    if part:
        return ARM_PARTS.get(part, "ARM part " + part)
    return platform.processor() or platform.machine()


def os_name():
    """PRETTY_NAME of /etc/os-release, else what the platform module says."""
    for line in read_text("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.platform()


def glibc_version():
    """The running glibc's version ("2.36"), or None on a system without glibc."""
    try:
        name = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        name = None
    if name and name.startswith("glibc "):
        return name.split(" ", 1)[1]
    library, version = platform.libc_ver()
    return version if library == "glibc" and version else None


def write_json_atomic(path, document):
    """JSON (indented, sorted keys) to a temporary file beside `path`, then renamed into place."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".tc-json-", suffix=".tmp", dir=folder)
    _PENDING.add(temporary)  # removed by end_with_caller's exit too
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(document, stream, indent=2, sort_keys=True)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    finally:
        _PENDING.discard(temporary)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's live process
        return True
    return True


def scratch_folder(kind):
    """A new scratch folder in the system temp dir, ``toolchain-<kind>-<pid>-XXXX``, after removing those of
    the same kind whose process is gone (an agent killed with SIGKILL, or its machine's power cut, cannot clean
    up after itself; the next agent of that kind does). Folders of live processes are left alone."""
    import shutil

    prefix = "toolchain-{}-".format(kind)
    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        names = []
    for name in names:
        owner = name[len(prefix):].split("-", 1)[0]
        if name.startswith(prefix) and owner.isdigit() and not _alive(int(owner)):
            path = os.path.join(root, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
    return tempfile.mkdtemp(prefix="{}{}-".format(prefix, os.getpid()), dir=root)


# temporary files being written, and what to undo, when the caller goes away (see end_with_caller)
_PENDING = set()
_ON_CALLER_GONE = []
CALLER_GONE_STATUS = 129  # 128 + SIGHUP: what a terminal's hang-up would have made of it


def when_caller_gone(action):
    """Run `action()` (no arguments, errors ignored) if end_with_caller ends this process."""
    _ON_CALLER_GONE.append(action)


def end_with_caller():
    """End this process at once when whoever reads its stderr goes away: the SSH session closed (Ctrl-C on
    the host, a dropped link) or the host-side process died.

    sshd sends no signal to the commands of a session without a terminal when the session ends: they would
    run on until their next write to the closed pipe, minutes in a silent phase, and could still write a
    result nobody fetches. A thread waits on stderr (poll for POLLERR/POLLHUP: the pipe's reader closed; no
    byte is sent), then removes the temporary files being written, runs the `when_caller_gone` actions and
    exits with CALLER_GONE_STATUS. Only where stderr is a pipe or a socket (not a file or a terminal).
    """
    import select
    import stat
    import threading

    try:
        mode = os.fstat(2).st_mode
    except OSError:
        return
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)) or not hasattr(select, "poll"):
        return
    gone = select.POLLERR | select.POLLHUP | select.POLLNVAL

    def watch():
        poller = select.poll()
        poller.register(2, gone)
        while True:
            try:
                events = poller.poll()
            except (OSError, IOError):  # EINTR on Python < 3.5's retry
                continue
            if any(event & gone for _, event in events):
                break
        for temporary in list(_PENDING):
            try:
                os.unlink(temporary)
            except OSError:
                pass
        for action in _ON_CALLER_GONE:
            try:
                action()
            except Exception:  # the process is ending: nothing is left to report to
                pass
        os._exit(CALLER_GONE_STATUS)

    thread = threading.Thread(target=watch, name="caller-watch")
    thread.daemon = True
    thread.start()


def timed_repeats(step, min_time, repeats):
    """The seconds of `step()` calls, sorted: at least `repeats` of them and at least `min_time` seconds in all
    (one untimed call first)."""
    step()
    seconds = []
    total = 0.0
    while len(seconds) < repeats or total < min_time:
        begin = time.perf_counter()
        step()
        elapsed = time.perf_counter() - begin
        seconds.append(elapsed)
        total += elapsed
    seconds.sort()
    return seconds


def cpu_session(path, threads, configure=None):
    """An onnxruntime CPU session of the model at `path` with `threads` intra-op threads, one inter-op thread and
    onnxruntime's default graph optimisation (ORT_ENABLE_ALL); `configure(options)` may set more."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if configure is not None:
        configure(options)
    try:
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except TypeError:  # onnxruntime before 1.6 has no providers argument; its default is the CPU
        return onnxruntime.InferenceSession(path, options)


def print_result(measure, *args):
    """measure(*args) as one JSON line on stdout (exit status 0), or one ERROR line on stderr (1)."""
    try:
        result = measure(*args)
    except Exception as exc:  # numpy missing or broken, not enough memory: one line the host reports
        sys.stderr.write("ERROR " + json.dumps({"type": type(exc).__name__, "message": str(exc)}) + "\n")
        return 1
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0
