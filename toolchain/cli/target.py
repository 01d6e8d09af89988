"""`toolchain target check|bench`, and the `target emulated` group (toolchain.cli.emulated) below it."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from toolchain.cli.common import UploadBar, agent_progress, show_bench, show_checks, title, warn_disagreement
from toolchain.cli.emulated import emulated_app
from toolchain.cli.options import (DEFAULT_ARTIFACTS, ArtifactsOption, Connection, JsonOption, PythonOption,
                                   WorkdirOption, connects)
from toolchain.cli.output import emit_json, info, table, warn
from toolchain.errors import ArtifactError, BenchmarkError, ToolchainError, TransportError

if TYPE_CHECKING:
    from toolchain.artifacts import ArtifactStore
    from toolchain.bench.settings import BenchSettings
    from toolchain.bench.summary import ModelBench
    from toolchain.remote.target import TargetProfile

BenchThreadsOption = Annotated[Optional[str], typer.Option(
    "--threads", help="Intra-op thread counts, e.g. 1,2,4 (default: the profile's bench threads).")]
BenchWarmupOption = Annotated[Optional[int], typer.Option(
    "--warmup", help="Untimed runs first (default: the profile's).", min=0)]
BenchRunsOption = Annotated[Optional[int], typer.Option(
    "--runs", help="Timed runs, at least (default: the profile's).", min=1)]

target_app = typer.Typer(no_args_is_help=True, help="Target profiles: check a target, run the emulated Bluebox.")
target_app.add_typer(emulated_app, name="emulated")


@target_app.command("check")
@connects()
def check(
    connection: Connection,
    workdir: WorkdirOption = None,
    python: PythonOption = None,
    json_output: JsonOption = False,
) -> None:
    """Connect and show the preflight table (arch, OS, Python, glibc, CPU, disk, onnxruntime); change nothing."""
    from toolchain.remote.preflight import FAIL, preflight_checks
    from toolchain.remote.session import TargetSession
    from toolchain.remote.target import open_transport

    profile = connection.profile(workdir=workdir, python=python)
    with open_transport(profile, accept_new_host_key=connection.accept_new_host_key) as transport:
        facts = TargetSession(transport, profile).read_facts()
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


def _newest_artifact(store: "ArtifactStore", model: str, target: str) -> tuple[str, Path | None]:
    """The model's name in the store and its artifact for the target (key `target`) there: the one `toolchain
    optimize` chose for it, else the newest export (None: there is none yet).

    A name with no folder is looked up under its registry spelling; a name the registry does not know
    fails here, before any work.
    """
    from toolchain.models import resolve

    try:
        return model, store.latest(model, target)
    except ArtifactError:
        name = resolve(model).name
    try:
        return name, store.latest(name, target)
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
    table(title(profile, "summary"), columns,
          [(row["model"], row["variant"], row["threads"], f"{row['p50_ms']:.3f}", f"{row['p90_ms']:.3f}",
            f"{row['throughput_ips']:.1f}", f"{row['top1_target']:.2f}",
            "-" if row["top1_host"] is None else f"{row['top1_host']:.2f}",
            "-" if row["agreement_pct"] is None else f"{row['agreement_pct']:.2f}", f"{row['model_bytes'] / 1024:.0f}")
           for row in rows], right_align=columns[2:])


def _deploy_and_bench(profile: "TargetProfile", name: str, found: Path | None, artifacts: Path,
                      settings: "BenchSettings", connection: Connection, json_output: bool) -> "ModelBench":
    """One model of `toolchain target bench`: its artifact (made now if there is none), deployed, benched."""
    from toolchain.bench.summary import ModelBench
    from toolchain.bench.system import bench_remote
    from toolchain.remote.deploy import deploy as run_deploy
    from toolchain.artifacts import load_artifact

    folder, exported = _artifact_or_export(found, name, artifacts, json_output)
    artifact = load_artifact(folder)  # checked once here, for the deploy and the bench
    with UploadBar() as bar:
        report = run_deploy(profile, artifact, accept_new_host_key=connection.accept_new_host_key,
                            break_lock=connection.break_lock, on_message=info, on_progress=bar)
    info(f"deployed {report.artifact_id}: {report.bytes_sent:,} bytes sent in {report.seconds:.1f} s")
    with agent_progress() as on_progress:
        run = bench_remote(profile, artifact, settings, on_message=info, on_progress=on_progress)
    return ModelBench(name, folder, exported, report, run)


@target_app.command("bench")
@connects()
def bench_models(
    connection: Connection,
    models: Annotated[Optional[list[str]], typer.Argument(
        help="Models to deploy and bench (default: the papers' Table 4 models).")] = None,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    threads: BenchThreadsOption = None,
    warmup: BenchWarmupOption = None,
    runs: BenchRunsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Deploy and bench each model's newest artifact on the target (made first where there is none); one summary.

    The summary is also stored as artifacts/bench-remote/<target>-<UTC time>.json.
    """
    from toolchain.artifacts import ArtifactStore
    from toolchain.bench.settings import parse_threads
    from toolchain.bench.summary import ModelFailure, summary_document, summary_path
    from toolchain.fsutil import atomic_write_json

    profile = connection.profile()
    settings = profile.bench.with_overrides(threads=parse_threads(threads) if threads else None, warmup=warmup,
                                            runs=runs)
    from toolchain.optimize.targets import target_key

    planned = dict(_newest_artifact(ArtifactStore(artifacts), model, target_key(profile))
                   for model in models or table4_models())
    started = datetime.now(timezone.utc)
    benches, failures = [], []
    for name, found in planned.items():
        info(f"== {name} on {profile.address}" + (" (EMULATED)" if profile.emulated else ""))
        try:
            benches.append(_deploy_and_bench(profile, name, found, artifacts, settings, connection, json_output))
        except TransportError:
            raise  # the target is unreachable: the next models would fail the same way
        except ToolchainError as error:
            warn(f"{name}: {error.message}" + (f" ({error.hint})" if error.hint else ""))
            failures.append(ModelFailure(name, error.message, error.hint or ""))
            continue
        if not json_output:
            show_bench(benches[-1].run)
        warn_disagreement(benches[-1].run)
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


def register(app: typer.Typer) -> None:
    """Add the `target` group (with `target emulated`) to the toolchain app."""
    app.add_typer(target_app, name="target")
