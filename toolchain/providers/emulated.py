"""The emulated Bluebox: an arm64 Debian root filesystem under qemu-user, its sshd in a network namespace.

Build once (debootstrap, ~2 min), cached as a zstd tarball; each instance unpacks it into its own
folder, gets its own host key and client key, and runs `sshd` as pid 1 of a private pid/mount/uts
namespace inside a network namespace `tc-<instance>` at <subnet>.2 (the host side is <subnet>.1).
Nothing outside this machine is reached. Two details make onnxruntime work under qemu-user: a fake
/proc/cpuinfo of 8 Cortex-A72 cores (without it `import onnxruntime` dies with SIGSEGV) and
QEMU_CPU=cortex-a72 in every session (qemu's default CPU makes ORT 20-80x slower).

Latency measured here is the emulator's, not the Bluebox's: everything it produces is labeled emulated.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from toolchain.errors import EmulatedTargetError
from toolchain.fsutil import atomic_write_bytes, atomic_write_json, process_alive
from toolchain.fsutil import cache_root
from toolchain.remote.target import EmulationSettings, TargetProfile

SUITE = "bookworm"
PACKAGES = ("python3", "openssh-server", "openssh-sftp-server")
# bump when the build recipe below changes: the cached tarball's name carries it
ROOTFS_VERSION = 1
USER = "bluebox"
HOSTNAME = "bluebox-emulated"
SSH_PORT = 22
EMULATED_CORES = 8
FALLBACK_MIRROR = "http://deb.debian.org/debian"
_INSTANCE = re.compile(r"^[a-z0-9]{1,8}$")
_SUBNET = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0

Messages = Callable[[str], None]

_CPUINFO_BLOCK = ("processor\t: {index}\nBogoMIPS\t: 50.00\n"
                  "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\n"
                  "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
                  "CPU part\t: 0xd08\nCPU revision\t: 2\n\n")

_SSHD_CONFIG = """\
# sshd of the emulated Bluebox (written by toolchain.providers.emulated)
ListenAddress {address}
Port {port}
HostKey /etc/toolchain/ssh_host_ed25519_key
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
Subsystem sftp /usr/lib/openssh/sftp-server
# every program a session starts runs under qemu: make it emulate the Bluebox's core
SetEnv QEMU_CPU=cortex-a72
"""

# Runs inside the new uts/pid/mount namespaces: pid 1 ends up being sshd.
_INNER_SCRIPT = """\
set -eu
hostname {hostname}
mount --make-rprivate /
mount -t proc proc {root}/proc
mount --bind {state}/cpuinfo {root}/proc/cpuinfo
mount -t tmpfs -o mode=755 tmpfs {root}/sys
mkdir -p {root}/sys/devices/system/cpu
mount --bind {state}/sys-cpu {root}/sys/devices/system/cpu
mount -t tmpfs -o mode=755 tmpfs {root}/run
mkdir -p {root}/run/sshd
mount -t devpts -o newinstance,ptmxmode=0666 devpts {root}/dev/pts
mount -t tmpfs tmpfs {root}/dev/shm
export QEMU_CPU=cortex-a72
exec chroot {root} /usr/sbin/sshd -D -e -f /etc/toolchain/sshd_config
"""


@dataclass(frozen=True)
class EmulatedStatus:
    """What `toolchain target emulated status` shows."""

    instance: str
    running: bool
    address: str
    pid: int | None
    rootfs_cached: Path | None
    rootfs_bytes: int | None
    state_dir: Path


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt already uses for the main suite (deb822 .sources or one-line .list files)."""
    candidates: list[tuple[str, list[str]]] = []
    for path in sorted(apt_dir.glob("sources.list.d/*.sources")):
        for stanza in path.read_text(errors="replace").split("\n\n"):
            fields = dict(line.split(":", 1) for line in stanza.splitlines()
                          if ":" in line and not line.startswith((" ", "#")))
            fields = {key.strip().lower(): value.strip() for key, value in fields.items()}
            if fields.get("enabled", "yes").lower() != "no" and "deb" in fields.get("types", "").split():
                for uri in fields.get("uris", "").split():
                    candidates.append((uri, fields.get("suites", "").split()))
    for path in [apt_dir / "sources.list", *sorted(apt_dir.glob("sources.list.d/*.list"))]:
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb":
                    candidates.append((words[1], [words[2]]))
    for uri, suites in candidates:
        if SUITE in suites and "security" not in uri:
            return uri.rstrip("/")
    return FALLBACK_MIRROR


def _run(argv: list[str], what: str, hint: str, **kwargs: object) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    except OSError as exc:
        raise EmulatedTargetError(f"{what}: cannot run {argv[0]}: {exc.strerror}", hint) from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise EmulatedTargetError(f"{what} failed: {detail[-1] if detail else f'exit {result.returncode}'}", hint)
    return result



def _port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


class EmulatedBluebox:
    """One emulated Bluebox instance: build, up, down, status. Needs root (namespaces, chroot, mounts)."""

    def __init__(self, instance: str = "bluebox", subnet: str = "10.200.0", cache: Path | None = None) -> None:
        if not _INSTANCE.match(instance):
            raise EmulatedTargetError(f"instance name {instance!r} is not 1-8 lowercase letters or digits",
                                      "pick a short name such as bluebox or ci")
        match = _SUBNET.match(subnet)
        if not match or not all(0 <= int(part) <= 255 for part in match.groups()):
            raise EmulatedTargetError(f"subnet {subnet!r} is not the first three parts of an IPv4 address",
                                      "use e.g. 10.200.0 (host side .1, target .2)")
        self.instance = instance
        self.subnet = subnet
        self.cache = (cache or cache_root()) / "emulated"
        self.netns = f"tc-{instance}"
        self.host_veth = f"tc-{instance}-h"
        self.target_veth = f"tc-{instance}-t"
        self.host_address = f"{subnet}.1"
        self.address = f"{subnet}.2"
        self.state_dir = self.cache / instance
        self.rootfs = self.state_dir / "rootfs"
        self.tarball = self.cache / f"rootfs-{SUITE}-arm64-v{ROOTFS_VERSION}.tar.zst"
        self.client_key = self.state_dir / "id_ed25519"
        self.known_hosts = self.state_dir / "known_hosts"
        self._state_file = self.state_dir / "state.json"
        self._process: subprocess.Popen | None = None

    @classmethod
    def from_settings(cls, settings: EmulationSettings) -> "EmulatedBluebox":
        """The instance a profile's [emulation] table names."""
        return cls(settings.instance, settings.subnet)

    def apply_to(self, profile: TargetProfile) -> TargetProfile:
        """The profile with this instance's address, user, key and known_hosts (no agent, no ssh_config)."""
        return dataclasses.replace(profile, host=self.address, port=SSH_PORT, user=USER,
                                   identity_file=self.client_key, known_hosts=self.known_hosts,
                                   use_agent=False, ssh_config=None, emulated=True,
                                   emulation=EmulationSettings(self.instance, self.subnet))

    # --- prerequisites ------------------------------------------------------------------------

    @staticmethod
    def _require_root() -> None:
        if os.geteuid() != 0:
            raise EmulatedTargetError("the emulated Bluebox needs root (network namespace, chroot, mounts)",
                                      "run it as root, e.g. in the CI container or with sudo")

    @staticmethod
    def _require_tools(*tools: str) -> None:
        missing = [tool for tool in tools if shutil.which(tool) is None]
        if missing:
            raise EmulatedTargetError(f"missing tools for the emulated Bluebox: {', '.join(missing)}",
                                      "install them with scripts/bootstrap (qemu-user-static, debootstrap, "
                                      "zstd, iproute2, util-linux, openssh-client)")

    @staticmethod
    def ensure_binfmt() -> None:
        """Make the kernel run aarch64 binaries through qemu (F flag: no qemu copy in the rootfs)."""
        binfmt = Path("/proc/sys/fs/binfmt_misc")
        hint = "install qemu-user-static and binfmt-support (scripts/bootstrap); in a container, run it privileged"
        if not (binfmt / "status").exists():
            _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)], "mounting binfmt_misc", hint)
        entry = binfmt / "qemu-aarch64"
        if not entry.exists() or not entry.read_text().startswith("enabled"):
            _run(["update-binfmts", "--enable", "qemu-aarch64"], "enabling qemu-aarch64 in binfmt_misc", hint)
        text = entry.read_text() if entry.exists() else ""
        flags = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("flags:")), "")
        if not text.startswith("enabled") or "F" not in flags:
            raise EmulatedTargetError("qemu-aarch64 is not registered with the F flag in binfmt_misc",
                                      "reinstall qemu-user-static (its binfmt entry has the F flag)")

    # --- build --------------------------------------------------------------------------------

    def build(self, on_message: Messages = lambda _: None) -> Path:
        """The cached root filesystem tarball, made with debootstrap first if it is not there yet."""
        if self.tarball.is_file():
            return self.tarball
        self._require_root()
        self._require_tools("debootstrap", "zstd", "tar", "chroot")
        self.ensure_binfmt()
        work = self.cache / f"build-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        rootfs = work / "rootfs"
        rootfs.mkdir(parents=True)
        mirror = debian_mirror()
        on_message(f"building the emulated Bluebox root filesystem: debootstrap {SUITE} arm64 from {mirror} "
                   "(about 2 minutes, once)")
        hint = "check the Debian mirror is reachable; the log is in " + str(work / "debootstrap.log")
        try:
            with open(work / "debootstrap.log", "w") as log:
                result = subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase",
                                         f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror],
                                        stdout=log, stderr=subprocess.STDOUT)
            if result.returncode != 0:
                raise EmulatedTargetError(f"debootstrap failed (exit {result.returncode})", hint)
            _run(["chroot", str(rootfs), "useradd", "--create-home", "--shell", "/bin/bash", USER],
                 "creating the login user", hint)
            # a locked account ('!') is refused by sshd even for key logins; '*' only disables passwords
            _run(["chroot", str(rootfs), "usermod", "-p", "*", USER], "unlocking the login user", hint)
            for leftover in [*rootfs.glob("etc/ssh/ssh_host_*"), *rootfs.glob("var/cache/apt/archives/*.deb"),
                             *rootfs.glob("var/lib/apt/lists/*_Packages")]:
                leftover.unlink()  # host keys are made per instance; package files are not needed
            on_message("packing the root filesystem")
            self.tarball.parent.mkdir(parents=True, exist_ok=True)
            partial = self.tarball.with_name(self.tarball.name + f".tmp-{os.getpid()}")
            tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", "-", "."],
                                   stdout=subprocess.PIPE)
            assert tar.stdout is not None
            packed = subprocess.run(["zstd", "-3", "-T0", "-q", "-f", "-o", str(partial)], stdin=tar.stdout)
            tar.stdout.close()
            if tar.wait() != 0 or packed.returncode != 0:
                partial.unlink(missing_ok=True)
                raise EmulatedTargetError("packing the root filesystem failed", "check free disk space in " +
                                          str(self.cache))
            os.replace(partial, self.tarball)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return self.tarball

    # --- up / down ----------------------------------------------------------------------------

    def _unpack(self, fresh: bool, on_message: Messages) -> None:
        marker = self.rootfs / ".toolchain-rootfs"
        if not fresh and marker.is_file() and marker.read_text().strip() == self.tarball.name:
            return
        on_message(f"unpacking {self.tarball.name} into {self.rootfs}")
        shutil.rmtree(self.rootfs, ignore_errors=True)
        self.rootfs.mkdir(parents=True)
        zstd = subprocess.Popen(["zstd", "-dcq", str(self.tarball)], stdout=subprocess.PIPE)
        assert zstd.stdout is not None
        tar = subprocess.run(["tar", "--numeric-owner", "-xpf", "-", "-C", str(self.rootfs)], stdin=zstd.stdout,
                             capture_output=True, text=True)
        zstd.stdout.close()
        if zstd.wait() != 0 or tar.returncode != 0:
            shutil.rmtree(self.rootfs, ignore_errors=True)
            raise EmulatedTargetError(f"unpacking {self.tarball} failed: {tar.stderr.strip()[-200:]}",
                                      f"delete {self.tarball} to rebuild it")
        marker.write_text(self.tarball.name + "\n")

    def _keys(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        host_key = self.state_dir / "ssh_host_ed25519_key"
        for key in (self.client_key, host_key):
            if not key.is_file():
                _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"toolchain-emulated-{self.instance}",
                      "-f", str(key)], "generating an SSH key", "install openssh-client")
        etc = self.rootfs / "etc" / "toolchain"
        etc.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(host_key, etc / "ssh_host_ed25519_key")
        os.chmod(etc / "ssh_host_ed25519_key", 0o600)
        (etc / "sshd_config").write_text(_SSHD_CONFIG.format(address=self.address, port=SSH_PORT))
        host_public = host_key.with_suffix(".pub").read_text().split()
        atomic_write_bytes(self.known_hosts, f"{self.address} {host_public[0]} {host_public[1]}\n".encode())
        uid, gid = self._user_ids()
        ssh_dir = self.rootfs / "home" / USER / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        authorized = ssh_dir / "authorized_keys"
        authorized.write_text(self.client_key.with_suffix(".pub").read_text())
        os.chmod(authorized, 0o600)
        for path in (ssh_dir, authorized):
            os.chown(path, uid, gid)

    def _user_ids(self) -> tuple[int, int]:
        # the uid inside the root filesystem, not the host's user of that name
        for line in (self.rootfs / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == USER:
                return int(fields[2]), int(fields[3])
        raise EmulatedTargetError(f"the root filesystem has no user {USER}", f"delete {self.tarball} to rebuild it")

    def _fake_cpu(self) -> None:
        (self.state_dir / "cpuinfo").write_text("".join(_CPUINFO_BLOCK.format(index=index)
                                                        for index in range(EMULATED_CORES)))
        cpu = self.state_dir / "sys-cpu"
        shutil.rmtree(cpu, ignore_errors=True)
        cpu.mkdir()
        every = f"0-{EMULATED_CORES - 1}\n"
        for name in ("possible", "present", "online"):
            (cpu / name).write_text(every)
        (cpu / "kernel_max").write_text(f"{EMULATED_CORES - 1}\n")
        for index in range(EMULATED_CORES):
            topology = cpu / f"cpu{index}" / "topology"
            topology.mkdir(parents=True)
            (cpu / f"cpu{index}" / "online").write_text("1\n")
            for name, value in (("core_id", index), ("physical_package_id", 0),
                                ("thread_siblings_list", index), ("core_siblings_list", every.strip())):
                (topology / name).write_text(f"{value}\n")

    def _network_up(self) -> None:
        hint = "check that iproute2 is installed and network namespaces are allowed here"
        steps = [["ip", "netns", "add", self.netns],
                 ["ip", "link", "add", self.host_veth, "type", "veth", "peer", "name", self.target_veth],
                 ["ip", "link", "set", self.target_veth, "netns", self.netns],
                 ["ip", "addr", "add", f"{self.host_address}/24", "dev", self.host_veth],
                 ["ip", "link", "set", self.host_veth, "up"],
                 ["ip", "-n", self.netns, "addr", "add", f"{self.address}/24", "dev", self.target_veth],
                 ["ip", "-n", self.netns, "link", "set", self.target_veth, "up"],
                 ["ip", "-n", self.netns, "link", "set", "lo", "up"]]
        for step in steps:
            _run(step, f"network namespace set-up ({' '.join(step[:4])})", hint)

    def _namespace_exists(self) -> bool:
        return (Path("/run/netns") / self.netns).exists()

    def up(self, fresh: bool = False, on_message: Messages = lambda _: None) -> None:
        """Start the instance (building and unpacking first when needed); `fresh` discards its old disk."""
        self._require_root()
        self._require_tools("zstd", "tar", "unshare", "ip", "ssh-keygen", "chroot")
        self.ensure_binfmt()
        self.down()  # leftovers of a killed run with the same names
        self.build(on_message)
        self._unpack(fresh, on_message)
        self._keys()
        self._fake_cpu()
        inner = self.state_dir / "inner.sh"
        inner.write_text(_INNER_SCRIPT.format(hostname=HOSTNAME, root=self.rootfs, state=self.state_dir))
        self._network_up()
        log = open(self.state_dir / "sshd.log", "wb")
        try:
            self._process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--pid", "--mount", "--fork",
                 "--kill-child", "/bin/sh", str(inner)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        atomic_write_json(self._state_file, {"pid": self._process.pid, "netns": self.netns, "address": self.address,
                                             "inner": str(inner), "started": time.time()})
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _port_open(self.address, SSH_PORT):
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = (self.state_dir / "sshd.log").read_text(errors="replace").strip().splitlines()[-1:]
                self.down()
                raise EmulatedTargetError(f"the emulated Bluebox's sshd did not start: {' '.join(tail) or 'no output'}",
                                          f"see {self.state_dir / 'sshd.log'}")
            time.sleep(0.1)
        on_message(f"emulated Bluebox {self.instance} is up at {USER}@{self.address} (sshd under qemu-aarch64)")

    def _read_state(self) -> dict:
        try:
            return json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _ours(self, pid: int, inner: str) -> bool:
        """Is `pid` still the unshare process this instance started (and not a reused pid)?"""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"unshare" in cmdline[0] and inner.encode() in cmdline

    def down(self) -> bool:
        """Stop sshd (pid 1 of its namespace: the rest goes with it), delete the namespace. True if it ran."""
        state = self._read_state()
        pid, inner = state.get("pid"), state.get("inner", "")
        was_running = False
        if isinstance(pid, int) and process_alive(pid) and self._ours(pid, inner):
            was_running = True
            # unshare itself ignores SIGTERM: stop its child (sshd), and unshare follows it
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                children = []
            for child in children:
                try:
                    os.kill(int(child), signal.SIGTERM)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + _STOP_TIMEOUT_S
            while process_alive(pid) and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.05)
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)  # --kill-child takes sshd and everything below it along
        self._reap(wait=True)
        if self._namespace_exists():
            _run(["ip", "netns", "delete", self.netns], "deleting the network namespace",
                 f"delete it by hand: ip netns delete {self.netns}")
        veth = Path(f"/sys/class/net/{self.host_veth}")
        # deleting the namespace deletes the pair too, a moment later: only a pair still there needs it
        if veth.exists() and subprocess.run(["ip", "link", "delete", self.host_veth],
                                            capture_output=True).returncode != 0 and veth.exists():
            raise EmulatedTargetError(f"cannot delete the veth pair {self.host_veth}",
                                      f"delete it by hand: ip link delete {self.host_veth}")
        self._state_file.unlink(missing_ok=True)
        return was_running

    def _reap(self, wait: bool = False) -> None:
        # collect our own child so it does not stay a zombie
        if self._process is not None:
            if wait:
                try:
                    self._process.wait(timeout=_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
                self._process = None
            else:
                self._process.poll()

    def running(self) -> bool:
        """True when the instance's sshd answers on its address."""
        state = self._read_state()
        pid = state.get("pid")
        return isinstance(pid, int) and process_alive(pid) and self._ours(pid, state.get("inner", "")) \
            and _port_open(self.address, SSH_PORT)

    def require_running(self) -> None:
        """Refuse early, with the command that fixes it, when the instance is not up."""
        if not self.running():
            raise EmulatedTargetError(f"the emulated Bluebox {self.instance!r} is not running",
                                      "start it: toolchain target emulated up (as root)")

    def status(self) -> EmulatedStatus:
        state = self._read_state()
        pid = state.get("pid") if isinstance(state.get("pid"), int) else None
        return EmulatedStatus(instance=self.instance, running=self.running(), address=f"{USER}@{self.address}",
                              pid=pid, rootfs_cached=self.tarball if self.tarball.is_file() else None,
                              rootfs_bytes=self.tarball.stat().st_size if self.tarball.is_file() else None,
                              state_dir=self.state_dir)

    def purge(self) -> None:
        """Stop the instance and delete its unpacked disk and keys (the cached tarball stays)."""
        self.down()
        shutil.rmtree(self.state_dir, ignore_errors=True)
