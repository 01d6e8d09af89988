"""`toolchain rtmaps`: the RTMaps Python-bridge component of an artifact, with its golden vectors and README."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from toolchain.cli.common import artifact_folder
from toolchain.cli.options import DEFAULT_ARTIFACTS, ArtifactsOption, JsonOption, OptionalModelOption
from toolchain.cli.output import emit_json, info, table

RTMAPS_EXAMPLE = "toolchain rtmaps --artifact artifacts/hps-06-0.5x/<id>"
ArtifactOption = Annotated[Optional[Path], typer.Option(
    "--artifact", "-a", help="Artifact folder (artifacts/<model>/<id>/) to write the component of.")]
OutputOption = Annotated[Optional[Path], typer.Option(
    "--output", "-o", help="Folder for the component (default: rtmaps/ inside the artifact folder); replaced whole.")]


def rtmaps(
    artifact: ArtifactOption = None,
    model: OptionalModelOption = None,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    output: OutputOption = None,
    json_output: JsonOption = False,
) -> None:
    """Write the RTMaps Python-bridge component of an artifact (and its golden vectors); print the files' paths."""
    from toolchain.rtmaps import write_component

    written = write_component(artifact_folder(artifact, model, artifacts, RTMAPS_EXAMPLE), output)
    if json_output:
        emit_json(written.to_dict())
        return
    table(None, ["file", "bytes"], [(str(item.path), item.size) for item in written.files], right_align=["bytes"])
    info(f"RTMaps component in {written.folder} (opens {written.default_model_path}; preprocessing from the "
         f"{written.preprocessing.source}); load it in RTMaps Studio as its README.md says")


def register(app: typer.Typer) -> None:
    """Add `rtmaps` to the toolchain app."""
    app.command("rtmaps")(rtmaps)
