"""`toolchain deploy`: preflight, offline runtime provisioning, verified idempotent upload.

paramiko, onnx and numpy are imported inside the command (through toolchain.remote), so
`toolchain --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from toolchain.cli.common import UploadBar, artifact_folder, show_checks
from toolchain.cli.options import (DEFAULT_ARTIFACTS, ArtifactsOption, Connection, JsonOption, OptionalModelOption,
                                   PythonOption, WorkdirOption, connects)
from toolchain.cli.output import emit_json, info, table, warn
from toolchain.errors import ToolchainError

if TYPE_CHECKING:
    from toolchain.remote.deploy import DeployReport
    from toolchain.remote.preflight import Check

ArtifactOption = Annotated[Optional[Path], typer.Option(
    "--artifact", "-a", help="Artifact folder (artifacts/<model>/<id>/) to deploy.")]
OnnxruntimeOption = Annotated[Optional[str], typer.Option(
    "--onnxruntime", help="onnxruntime version for the target, or 'newest' (overrides the profile).")]
NumpyOption = Annotated[Optional[str], typer.Option(
    "--numpy", help="numpy version for the target, or 'newest' (overrides the profile).")]
WheelsOption = Annotated[Optional[Path], typer.Option(
    "--wheels", help="Folder of .whl files to provision from, without contacting the package index.")]
DEPLOY_EXAMPLE = "toolchain deploy --model hps-06-0.5x --target bluebox2 --host 10.234.224.16"


def _show_report(report: "DeployReport") -> None:
    upload = report.upload
    assert upload is not None
    table(None, ["file", "bytes", "action"],
          [(name, upload.sizes.get(name, ""), "sent" if name in upload.sent else "unchanged")
           for name in [*upload.sent, *upload.unchanged]], right_align=["bytes"])
    info(f"deployed {report.model} {report.artifact_id} to {report.target}:{report.remote_dir}: "
         f"{len(upload.sent)} file(s) sent, {len(upload.unchanged)} unchanged, {report.bytes_sent:,} bytes "
         f"in {report.seconds:.1f} s")
    if report.rtmaps_upload is not None:
        from toolchain.artifacts import INT8_NAME
        from toolchain.rtmaps import COMPONENT_NAME, GOLDEN_NAME, README_NAME

        component = report.rtmaps_upload
        table(None, ["RTMaps component file", "bytes", "action"],
              [(name, component.sizes.get(name, ""), "sent" if name in component.sent else "unchanged")
               for name in [*component.sent, *component.unchanged]], right_align=["bytes"])
        info(f"RTMaps component in {report.target}:{report.rtmaps_dir}: {COMPONENT_NAME}, {GOLDEN_NAME} and "
             f"{README_NAME}, beside the model it opens ({report.remote_dir}/{INT8_NAME}); "
             f"{len(component.sent)} file(s) sent, {len(component.unchanged)} unchanged; load it in RTMaps Studio "
             "as its README.md says")
    if upload.removed_partial:
        warn(f"removed {len(upload.removed_partial)} partial upload(s) left by an interrupted run")
    if report.cleaned:
        info(f"removed old artifacts: {', '.join(report.cleaned)}")


@connects()
def deploy(
    connection: Connection,
    artifact: ArtifactOption = None,
    model: OptionalModelOption = None,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    workdir: WorkdirOption = None,
    python: PythonOption = None,
    onnxruntime: OnnxruntimeOption = None,
    numpy: NumpyOption = None,
    wheels: WheelsOption = None,
    clean: Annotated[bool, typer.Option("--clean", help="Remove other artifacts from the target afterwards.")] = False,
    rtmaps: Annotated[bool, typer.Option("--rtmaps", help="Also place the artifact's RTMaps component beside its "
                                         "models (<artifact>/rtmaps/ there; see docs/rtmaps.md).")] = False,
    json_output: JsonOption = False,
) -> None:
    """Deploy an artifact to the target: preflight, offline runtime provisioning, verified upload."""
    from toolchain.remote.deploy import deploy as run_deploy
    from toolchain.remote.provision import WheelIndex

    profile = connection.profile(workdir=workdir, python=python, onnxruntime=onnxruntime, numpy=numpy)
    folder = artifact_folder(artifact, model, artifacts, DEPLOY_EXAMPLE, target=profile)
    shown: list[list["Check"]] = []
    try:
        with UploadBar() as bar:
            report = run_deploy(profile, folder, clean=clean, rtmaps=rtmaps, accept_new_host_key=connection.accept_new_host_key,
                                break_lock=connection.break_lock,
                                index=WheelIndex(wheel_dir=wheels) if wheels else None, on_message=info,
                                on_checks=lambda checks: shown.append(list(checks)), on_progress=bar)
    except ToolchainError:
        if shown and not json_output:
            show_checks(profile, shown[-1])
        raise
    if json_output:
        emit_json(report.to_dict())
        return
    show_checks(profile, report.checks)
    _show_report(report)


def register(app: typer.Typer) -> None:
    """Add `deploy` to the toolchain app."""
    app.command("deploy")(deploy)
