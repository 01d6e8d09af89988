"""`toolchain deploy`, `toolchain target check|bench|emulated`, and the remote half of `toolchain bench --host`.

paramiko, onnx and numpy are imported inside the commands (through toolchain.remote), so
`toolchain --help` stays fast.
"""

from __future__ import annotations

import shlex
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterator, Optional

import typer

from toolchain.cli.options import (DEFAULT_ARTIFACTS, AcceptNewHostKeyOption, ArtifactsOption, HostOption,
                                   IdentityFileOption, JsonOption, KnownHostsOption, OptionalModelOption,
                                   PortOption, TargetOption, UserOption)
from toolchain.cli.output import emit_json, info, progress, table, warn
from toolchain.errors import (ArtifactError, BenchmarkError, HostKeyUnknownError, ToolchainError, TransportError,
                              UsageError)

if TYPE_CHECKING:
    from toolchain.artifacts import ArtifactStore
    from toolchain.benchmark import BenchRun, ProgressCallback
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
BenchThreadsOption = Annotated[Optional[str], typer.Option(
    "--threads", help="Intra-op thread counts, e.g. 1,2,4 (default: the profile's bench threads).")]
BenchWarmupOption = Annotated[Optional[int], typer.Option(
    "--warmup", help="Untimed runs first (default: the profile's).", min=0)]
BenchRunsOption = Annotated[Optional[int], typer.Option(
    "--runs", help="Timed runs, at least (default: the profile's).", min=1)]

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
    from toolchain.artifacts import ArtifactStore

    if (artifact is None) == (model is None):
        raise UsageError("pass exactly one of --artifact PATH and --model NAME",
                         "e.g. toolchain deploy --model hps-06-0.5x --host 10.234.224.16")
    return artifact if artifact is not None else ArtifactStore(artifacts).latest(model or "")


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


@contextmanager
def _agent_progress() -> Iterator["ProgressCallback"]:
    """A progress bar fed by the agent's PROGRESS events; yields the callback."""
    with progress() as bar:
        task = bar.add_task("agent", total=None, status="")

        def on_progress(event: dict) -> None:
            bar.update(task, description=f"{event.get('variant', '')} {event.get('threads', '')} thread(s)",
                       completed=event.get("done"), total=event.get("total"), status=event.get("phase", ""))

        yield on_progress


def show_remote_bench(run: "BenchRun") -> None:
    """A remote result as the table `toolchain bench --target local` shows (labeled EMULATED where it is)."""
    from toolchain.report import bench_notes, bench_table

    summary = bench_table(run.document, run.agreements)
    measured = run.document["artifact"]
    table(f"{measured['model']} {measured['artifact_id']} {summary.title}", summary.columns, summary.rows,
          right_align=summary.right_align)
    for line in bench_notes(run.document):
        info(line)


def _warn_disagreement(run: "BenchRun") -> None:
    from toolchain.remote.bench import AGREEMENT_THRESHOLD_PCT

    for item in run.agreements:
        if item.agreement_pct < AGREEMENT_THRESHOLD_PCT:
            warn(f"{item.variant} threads {item.threads}: the target agrees with the host on only "
                 f"{item.agreement_pct:.2f}% of top-1 answers (threshold {AGREEMENT_THRESHOLD_PCT:g}%)")


def remote_bench(artifact: Path | None, model: str | None, artifacts: Path, target: str | None, host: str | None,
                 *, threads: str | None = None, warmup: int | None = None, runs: int | None = None,
                 batch: int | None = None, min_time: float | None = None, accept_new_host_key: bool = False,
                 json_output: bool = False) -> "BenchRun":
    """Run the benchmark agent on a target against a deployed artifact, print and return the result.

    A setting left None is the profile's [bench] default.
    """
    from toolchain.benchmark import parse_threads
    from toolchain.remote.bench import bench_remote, bench_settings

    folder = _artifact_dir(artifact, model, artifacts)
    profile = resolve_target(target, host)
    settings = bench_settings(profile, parse_threads(threads) if threads else None, batch=batch, warmup=warmup,
                              runs=runs, min_time=min_time)
    try:
        with _agent_progress() as on_progress:
            run = bench_remote(profile, folder, settings, accept_new_host_key=accept_new_host_key,
                               on_message=info, on_progress=on_progress)
    except HostKeyUnknownError as error:
        raise _with_accept_hint(error) from None
    if json_output:
        emit_json({**run.document, "stored": str(run.path)})
    else:
        show_remote_bench(run)
        info(f"stored {run.path}")
    _warn_disagreement(run)
    return run


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


def _newest_artifact(store: "ArtifactStore", model: str) -> tuple[str, Path | None]:
    """The model's name in the store and its newest artifact there (None: there is none yet).

    A name with no folder is looked up under its registry spelling; a name the registry does not know
    fails here, before any work.
    """
    from toolchain.models import resolve

    try:
        return model, store.latest(model)
    except ArtifactError:
        name = resolve(model).name
    try:
        return name, store.latest(name)
    except ArtifactError:
        return name, None


def _artifact_or_export(folder: Path | None, model: str, artifacts: Path, json_output: bool) -> tuple[Path, bool]:
    """The model's newest artifact, or one the host pipeline makes now (as `toolchain export --model` would)."""
    from toolchain.cli.pipeline import export_with_progress, show_result
    from toolchain.pipeline import ExportRequest

    if folder is not None:
        return folder, False
    info(f"{model}: no artifact under {artifacts}: running the host pipeline first "
         f"(toolchain export --model {model}, with its defaults)")
    result = export_with_progress(ExportRequest(model=model, artifacts=artifacts))
    if json_output:
        info(f"artifact: {result.folder}")
    else:
        show_result(result, json_output=False)
    return result.folder, True


def _show_summary(profile: "TargetProfile", rows: list[dict]) -> None:
    label = " EMULATED" if profile.emulated else ""
    columns = ["model", "variant", "threads", f"p50 ms{label}", f"p90 ms{label}", f"img/s{label}",
               "top-1 % target", "top-1 % host", "agree %", "KiB"]
    table(_title(profile, "summary"), columns,
          [(row["model"], row["variant"], row["threads"], f"{row['p50_ms']:.3f}", f"{row['p90_ms']:.3f}",
            f"{row['throughput_ips']:.1f}", f"{row['top1_target']:.2f}",
            "-" if row["top1_host"] is None else f"{row['top1_host']:.2f}",
            "-" if row["agreement_pct"] is None else f"{row['agreement_pct']:.2f}", f"{row['model_bytes'] / 1024:.0f}")
           for row in rows], right_align=columns[2:])


@target_app.command("bench")
def bench_models(
    models: Annotated[Optional[list[str]], typer.Argument(
        help="Models to deploy and bench (default: the papers' Table 4 models).")] = None,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    target: TargetOption = None,
    host: HostOption = None,
    threads: BenchThreadsOption = None,
    warmup: BenchWarmupOption = None,
    runs: BenchRunsOption = None,
    accept_new_host_key: AcceptNewHostKeyOption = False,
    json_output: JsonOption = False,
) -> None:
    """Deploy and bench each model's newest artifact on the target (made first where there is none); one summary.

    The summary is also stored as artifacts/bench-remote/<target>-<UTC time>.json.
    """
    from toolchain.artifacts import ArtifactStore
    from toolchain.benchmark import parse_threads
    from toolchain.fsutil import atomic_write_json
    from toolchain.remote.bench import (ModelBench, ModelFailure, bench_remote, bench_settings, summary_document,
                                        summary_path)
    from toolchain.remote.deploy import deploy as run_deploy

    profile = resolve_target(target, host)
    settings = bench_settings(profile, parse_threads(threads) if threads else None, warmup=warmup, runs=runs)
    store = ArtifactStore(artifacts)
    planned = dict(_newest_artifact(store, model) for model in models or table4_models())
    started = datetime.now(timezone.utc)
    benches: list[ModelBench] = []
    failures: list[ModelFailure] = []
    for name, found in planned.items():
        info(f"== {name} on {profile.address}" + (" (EMULATED)" if profile.emulated else ""))
        try:
            folder, exported = _artifact_or_export(found, name, artifacts, json_output)
            with _UploadBar() as bar:
                report = run_deploy(profile, folder, accept_new_host_key=accept_new_host_key, on_message=info,
                                    on_progress=bar)
            info(f"deployed {report.artifact_id}: {report.bytes_sent:,} bytes sent in {report.seconds:.1f} s")
            with _agent_progress() as on_progress:
                run = bench_remote(profile, folder, settings, on_message=info, on_progress=on_progress)
        except HostKeyUnknownError as error:
            raise _with_accept_hint(error) from None
        except TransportError:
            raise  # the target is unreachable: the next models would fail the same way
        except ToolchainError as error:
            warn(f"{name}: {error.message}" + (f" ({error.hint})" if error.hint else ""))
            failures.append(ModelFailure(name, error.message, error.hint or ""))
            continue
        benches.append(ModelBench(name, folder, exported, report, run))
        if not json_output:
            show_remote_bench(run)
        _warn_disagreement(run)
    summary = summary_document(profile, settings, benches, failures, started)
    stored = summary_path(artifacts, profile, started)
    atomic_write_json(stored, summary)
    if json_output:
        emit_json({**summary, "stored": str(stored)})
    else:
        _show_summary(profile, summary["rows"])
        info(f"stored {stored}")
    if failures:
        raise BenchmarkError(f"{len(failures)} of {len(planned)} model(s) failed on {profile.address}: "
                             + ", ".join(failure.model for failure in failures),
                             f"the warnings above say why; the others' results are in {stored}")


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
