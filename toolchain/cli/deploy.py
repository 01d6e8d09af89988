"""`toolchain deploy`, `toolchain target check|emulated`, and the remote half of `toolchain bench --host`.

paramiko, onnx and numpy are imported inside the commands (through toolchain.remote), so
`toolchain --help` stays fast.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from toolchain.cli.options import (DEFAULT_ARTIFACTS, AcceptNewHostKeyOption, ArtifactsOption, HostOption,
                                   IdentityFileOption, JsonOption, KnownHostsOption, OptionalModelOption,
                                   PortOption, TargetOption, UserOption)
from toolchain.cli.output import emit_json, info, progress, table, warn
from toolchain.errors import HostKeyUnknownError, ToolchainError, UsageError

if TYPE_CHECKING:
    from toolchain.remote.bench import RemoteBenchResult
    from toolchain.remote.emulated import EmulatedBluebox
    from toolchain.remote.preflight import Check
    from toolchain.remote.target import TargetProfile

ArtifactOption = Annotated[Optional[Path], typer.Option(
    "--artifact", "-a", help="Artifact folder (artifacts/<model>/<id>/) to deploy.")]
WorkdirOption = Annotated[Optional[str], typer.Option("--workdir", help="Work folder on the target.")]
PythonOption = Annotated[Optional[str], typer.Option("--python", help="Python interpreter on the target.")]
OnnxruntimeOption = Annotated[Optional[str], typer.Option(
    "--onnxruntime", help="onnxruntime version for the target, or 'newest' (overrides the profile).")]
NumpyOption = Annotated[Optional[str], typer.Option(
    "--numpy", help="numpy version for the target, or 'newest' (overrides the profile).")]
WheelsOption = Annotated[Optional[Path], typer.Option(
    "--wheels", help="Folder of .whl files to provision from, without contacting the package index.")]

target_app = typer.Typer(no_args_is_help=True, help="Target profiles: check a target, run the emulated Bluebox.")
emulated_app = typer.Typer(no_args_is_help=True,
                           help="The emulated aarch64 Bluebox (qemu-user + Debian arm64 + sshd in a netns; root).")
target_app.add_typer(emulated_app, name="emulated")


def resolve_target(target: str | None, host: str | None, port: int | None = None, user: str | None = None,
                   identity_file: Path | None = None, known_hosts: Path | None = None, workdir: str | None = None,
                   python: str | None = None, onnxruntime: str | None = None,
                   numpy: str | None = None) -> "TargetProfile":
    """The profile a command runs with (profile file, ~/.ssh/config, then these flags)."""
    from toolchain.remote.target import resolve_profile

    return resolve_profile(target, host=host, port=port, user=user, identity_file=identity_file,
                           known_hosts=known_hosts, workdir=workdir, python=python, onnxruntime=onnxruntime,
                           numpy=numpy)


def _with_accept_hint(error: HostKeyUnknownError) -> HostKeyUnknownError:
    """The hint with the exact command line that trusts the key (this command + --accept-new-host-key)."""
    if Path(sys.argv[0]).name == "toolchain":
        command = shlex.join(["toolchain", *sys.argv[1:], "--accept-new-host-key"])
        hint = (error.hint or "").split("; if it matches")[0]
        return HostKeyUnknownError(error.message, f"{hint}; if it matches, trust it: {command}")
    return error


def _title(profile: "TargetProfile", what: str) -> str:
    emulated = " -- EMULATED (qemu-user): timings are not the Bluebox's" if profile.emulated else ""
    return f"{what}: target {profile.name} ({profile.address}){emulated}"


def show_checks(profile: "TargetProfile", checks: list["Check"]) -> None:
    """The preflight table (one row per fact, with its status)."""
    table(_title(profile, "preflight"), ["check", "target", "status", "note"],
          [(check.name, check.value, check.status, check.note) for check in checks])


def _artifact_dir(artifact: Path | None, model: str | None, artifacts: Path) -> Path:
    from toolchain.remote.deploy import find_artifact

    if (artifact is None) == (model is None):
        raise UsageError("pass exactly one of --artifact PATH and --model NAME",
                         "e.g. toolchain deploy --model hps-06-0.5x --host 10.234.224.16")
    return artifact if artifact is not None else find_artifact(artifacts, model or "")


class _UploadBar:
    """A rich progress bar fed by upload callbacks (one task per file)."""

    def __init__(self) -> None:
        self._bar = progress()
        self._tasks: dict[str, object] = {}

    def __enter__(self) -> "_UploadBar":
        self._bar.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.__exit__(*exc_info)

    def __call__(self, name: str, done: int, total: int) -> None:
        if name not in self._tasks:
            self._tasks[name] = self._bar.add_task(f"upload {name}", total=total, status="")
        self._bar.update(self._tasks[name], completed=done)  # type: ignore[arg-type]


def deploy(
    artifact: ArtifactOption = None,
    model: OptionalModelOption = None,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    target: TargetOption = None,
    host: HostOption = None,
    port: PortOption = None,
    user: UserOption = None,
    identity_file: IdentityFileOption = None,
    known_hosts: KnownHostsOption = None,
    workdir: WorkdirOption = None,
    python: PythonOption = None,
    onnxruntime: OnnxruntimeOption = None,
    numpy: NumpyOption = None,
    wheels: WheelsOption = None,
    clean: Annotated[bool, typer.Option("--clean", help="Remove other artifacts from the target afterwards.")] = False,
    accept_new_host_key: AcceptNewHostKeyOption = False,
    json_output: JsonOption = False,
) -> None:
    """Deploy an artifact to the target: preflight, offline runtime provisioning, verified upload."""
    from toolchain.remote.deploy import deploy as run_deploy
    from toolchain.remote.provision import WheelIndex

    folder = _artifact_dir(artifact, model, artifacts)
    profile = resolve_target(target, host, port, user, identity_file, known_hosts, workdir, python, onnxruntime, numpy)
    shown: list[list["Check"]] = []
    try:
        with _UploadBar() as bar:
            report = run_deploy(profile, folder, clean=clean, accept_new_host_key=accept_new_host_key,
                                index=WheelIndex(wheel_dir=wheels) if wheels else None, on_message=info,
                                on_checks=lambda checks: shown.append(list(checks)), on_progress=bar)
    except HostKeyUnknownError as error:
        raise _with_accept_hint(error) from None
    except ToolchainError:
        if shown and not json_output:
            show_checks(profile, shown[-1])
        raise
    if json_output:
        emit_json(report.to_dict())
        return
    show_checks(profile, report.checks)
    upload = report.upload
    assert upload is not None
    table(None, ["file", "bytes", "action"],
          [(name, upload.sizes.get(name, ""), "sent" if name in upload.sent else "unchanged")
           for name in [*upload.sent, *upload.unchanged]], right_align=["bytes"])
    info(f"deployed {report.model} {report.artifact_id} to {report.target}:{report.remote_dir}: "
         f"{len(upload.sent)} file(s) sent, {len(upload.unchanged)} unchanged, {report.bytes_sent:,} bytes "
         f"in {report.seconds:.1f} s")
    if upload.removed_partial:
        warn(f"removed {len(upload.removed_partial)} partial upload(s) left by an interrupted run")
    if report.cleaned:
        info(f"removed old artifacts: {', '.join(report.cleaned)}")


# --- remote bench (called by `toolchain bench --host/--target`) --------------------------------


def show_remote_bench(result: "RemoteBenchResult") -> None:
    """The remote bench table: latency percentiles, throughput, accuracy and agreement per run."""
    document = result.document
    facts = document["target"]
    emulated = bool(facts.get("emulated"))
    label = " (EMULATED)" if emulated else ""
    agreement = {(item.variant, item.threads, item.batch): item for item in result.agreements}
    rows = []
    for entry in document["results"]:
        latency = entry["latency_ms"]
        match = agreement[(entry["variant"], int(entry["threads"]), int(entry["batch"]))]
        rows.append((entry["variant"], entry["threads"], entry["batch"], f"{latency['p50']:.3f}",
                     f"{latency['p90']:.3f}", f"{latency['p99']:.3f}", f"{entry['throughput_ips']:.1f}",
                     f"{entry['accuracy']['top1']:.2f}", f"{match.host_top1:.2f}", f"{match.agreement_pct:.2f}",
                     f"{entry['model_bytes'] / 1024:.0f}"))
    remote = document["remote"]
    table(f"{remote['model']} {remote['artifact_id']} on {facts.get('hostname')} ({facts.get('arch')}, "
          f"{facts.get('cpu_model')} x {facts.get('cores')}, onnxruntime {facts.get('onnxruntime')})"
          + (" -- EMULATED: latency is qemu's, not the Bluebox's" if emulated else ""),
          ["variant", "threads", "batch", f"p50 ms{label}", f"p90 ms{label}", f"p99 ms{label}", f"img/s{label}",
           "top-1 % target", "top-1 % host", "agreement %", "KiB"], rows,
          right_align=["threads", "batch", f"p50 ms{label}", f"p90 ms{label}", f"p99 ms{label}", f"img/s{label}",
                       "top-1 % target", "top-1 % host", "agreement %", "KiB"])


def remote_bench(artifact: Path | None, model: str | None, artifacts: Path, target: str | None, host: str | None,
                 *, threads: str | None = None, warmup: int | None = None, runs: int | None = None,
                 batch: int | None = None, accept_new_host_key: bool = False,
                 json_output: bool = False) -> "RemoteBenchResult":
    """Run the benchmark agent on a target against a deployed artifact, print and return the result."""
    from toolchain.remote.bench import AGREEMENT_THRESHOLD_PCT, RemoteBenchSettings, bench_remote

    folder = _artifact_dir(artifact, model, artifacts)
    profile = resolve_target(target, host)
    thread_counts = _parse_threads(threads) if threads else None
    settings = RemoteBenchSettings.from_profile(profile, threads=thread_counts, warmup=warmup, runs=runs, batch=batch)
    with progress() as bar:
        task = bar.add_task("agent", total=None, status="")

        def on_progress(event: dict) -> None:
            bar.update(task, description=f"{event.get('variant', '')} threads {event.get('threads', '')}",
                       completed=event.get("done"), total=event.get("total"), status=event.get("phase", ""))

        try:
            result = bench_remote(profile, folder, settings, accept_new_host_key=accept_new_host_key,
                                  on_message=info, on_progress=on_progress)
        except HostKeyUnknownError as error:
            raise _with_accept_hint(error) from None
    if json_output:
        emit_json({**result.document, "stored": str(result.path)})
    else:
        show_remote_bench(result)
        info(f"stored {result.path}")
    for item in result.agreements:
        if item.agreement_pct < AGREEMENT_THRESHOLD_PCT:
            warn(f"{item.variant} threads {item.threads}: the target agrees with the host on only "
                 f"{item.agreement_pct:.2f}% of top-1 answers (threshold {AGREEMENT_THRESHOLD_PCT:g}%)")
    return result


def _parse_threads(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise UsageError(f"--threads must be comma-separated positive integers, got {text!r}", "e.g. --threads 1,2,4")
    return counts


# --- toolchain target ... ----------------------------------------------------------------------


@target_app.command("check")
def check(
    target: TargetOption = None,
    host: HostOption = None,
    port: PortOption = None,
    user: UserOption = None,
    identity_file: IdentityFileOption = None,
    known_hosts: KnownHostsOption = None,
    workdir: WorkdirOption = None,
    python: PythonOption = None,
    accept_new_host_key: AcceptNewHostKeyOption = False,
    json_output: JsonOption = False,
) -> None:
    """Connect and show the preflight table (arch, OS, Python, glibc, CPU, disk, onnxruntime); change nothing."""
    from toolchain.remote.preflight import FAIL, preflight_checks
    from toolchain.remote.session import TargetSession
    from toolchain.remote.target import open_transport

    profile = resolve_target(target, host, port, user, identity_file, known_hosts, workdir, python)
    try:
        with open_transport(profile, accept_new_host_key=accept_new_host_key) as transport:
            facts = TargetSession(transport, profile).read_facts()
    except HostKeyUnknownError as error:
        raise _with_accept_hint(error) from None
    checks = preflight_checks(facts, profile, 0)
    if json_output:
        emit_json({"profile": profile.name, "address": profile.address, "emulated": profile.emulated,
                   "checks": [item.to_dict() for item in checks]})
    else:
        show_checks(profile, checks)
    if any(item.status == FAIL for item in checks):
        raise typer.Exit(1)


def table4_models() -> list[str]:
    """The models of the deployment table of the HPS-on-Bluebox paper (its Table 4), in the paper's order."""
    from toolchain.models import list_models

    return [spec.name for spec in list_models("*")
            if any(row.table == "Table 4" and row.source == "hps-bluebox2-deployment.txt"
                   for row in spec.paper_results)]


@target_app.command("bench")
def bench_models(
    models: Annotated[Optional[list[str]], typer.Argument(
        help="Models to deploy and bench (default: the papers' Table 4 models).")] = None,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    target: TargetOption = None,
    host: HostOption = None,
    accept_new_host_key: AcceptNewHostKeyOption = False,
    json_output: JsonOption = False,
) -> None:
    """Deploy and bench the newest artifact of each model on the target; one summary table at the end."""
    from toolchain.remote.deploy import deploy as run_deploy
    from toolchain.remote.deploy import find_artifact
    from toolchain.remote.bench import bench_remote

    names = models or table4_models()
    folders = {name: find_artifact(artifacts, name) for name in names}
    profile = resolve_target(target, host)
    results = []
    for name, folder in folders.items():
        info(f"== {name} ({folder.name}) on {profile.address}")
        try:
            report = run_deploy(profile, folder, accept_new_host_key=accept_new_host_key, on_message=info)
        except HostKeyUnknownError as error:
            raise _with_accept_hint(error) from None
        info(f"deployed: {report.bytes_sent:,} bytes sent, onnxruntime {report.runtime.onnxruntime if report.runtime else '?'}")
        results.append(bench_remote(profile, folder, on_message=info))
        if not json_output:
            show_remote_bench(results[-1])
    if json_output:
        emit_json([{**result.document, "stored": str(result.path)} for result in results])
        return
    label = " (EMULATED)" if profile.emulated else ""
    rows = []
    for result in results:
        remote = result.document["remote"]
        for entry, match in zip(result.document["results"], result.agreements):
            rows.append((remote["model"], entry["variant"], entry["threads"], f"{entry['latency_ms']['p50']:.3f}",
                         f"{entry['accuracy']['top1']:.2f}", f"{match.host_top1:.2f}", f"{match.agreement_pct:.2f}",
                         f"{entry['model_bytes'] / 1e6:.3f}"))
    table(_title(profile, "summary"), ["model", "variant", "threads", f"p50 ms{label}", "top-1 % target",
                                       "top-1 % host", "agreement %", "MB"], rows,
          right_align=["threads", f"p50 ms{label}", "top-1 % target", "top-1 % host", "agreement %", "MB"])


def _emulated(target: str | None) -> "EmulatedBluebox":
    from toolchain.remote.emulated import EmulatedBluebox
    from toolchain.remote.target import load_profile

    profile = load_profile(target or "emulated")
    if profile.emulation is None:
        raise UsageError(f"target profile {profile.name} has no [emulation] table",
                         "use --target emulated (targets/emulated/target.toml)")
    return EmulatedBluebox.from_settings(profile.emulation)


@emulated_app.command("up")
def emulated_up(
    target: TargetOption = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start from a clean disk (drops provisioned runtimes).")]
    = False,
) -> None:
    """Build (once, ~2 min) and start the emulated Bluebox; it runs until `toolchain target emulated down`."""
    instance = _emulated(target)
    instance.up(fresh=fresh, on_message=info)


@emulated_app.command("down")
def emulated_down(
    target: TargetOption = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also delete its disk and keys.")] = False,
) -> None:
    """Stop the emulated Bluebox (its processes by pid) and delete its network namespace."""
    instance = _emulated(target)
    if purge:
        instance.purge()
        info("stopped and purged")
    else:
        info("stopped" if instance.down() else "was not running")


@emulated_app.command("status")
def emulated_status(target: TargetOption = None, json_output: JsonOption = False) -> None:
    """Is the emulated Bluebox running, where, and is its root filesystem cached?"""
    status = _emulated(target).status()
    record = {"instance": status.instance, "running": status.running, "address": status.address, "pid": status.pid,
              "rootfs_cached": str(status.rootfs_cached) if status.rootfs_cached else None,
              "rootfs_bytes": status.rootfs_bytes, "state_dir": str(status.state_dir)}
    if json_output:
        emit_json(record)
    else:
        table("emulated Bluebox", ["key", "value"], [(key, value) for key, value in record.items()])


def register(app: typer.Typer) -> None:
    """Add `deploy` and the `target` group to the main app."""
    app.command("deploy")(deploy)
    app.add_typer(target_app, name="target")
