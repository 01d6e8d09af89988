"""`toolchain deploy`: preflight, runtime provisioning, opset check, verified idempotent upload.

Remote layout under the profile's workdir:

    <workdir>/.lock                        flock held by the running deploy or bench
    <workdir>/runtime/<onnxruntime-...>/   provisioned onnxruntime + numpy (PYTHONPATH for the agent)
    <workdir>/.toolchain/agent-<sha12>/    the target-side package (helper, benchmark agent), once per version
    <workdir>/<artifact-id>/               model.fp32.onnx, model.int8.onnx, evalset.npz, manifest.json,
                                           deploy.json (written last: the deploy is complete)
    <workdir>/<artifact-id>/rtmaps/        with --rtmaps: the RTMaps component (opening the INT8 model beside it
                                           by its path there), golden.npz, README.md (toolchain.rtmaps)

Every file goes to a temporary name, is sha256-checked on the target and renamed into place; files
already there with the right hash are skipped, so an unchanged redeploy sends 0 bytes.
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from toolchain.artifacts import FP32_NAME, INT8_NAME, MANIFEST_NAME, Artifact, load_artifact
from toolchain.errors import TargetIncompatibleError
from toolchain.hashing import sha256_file
from toolchain.remote.preflight import FAIL, OK, Check, preflight_checks, require_passed
from toolchain.remote.provision import Runtime, WheelIndex, existing_runtime, provision_runtime
from toolchain.remote.session import LocalFile, TargetSession, UploadProgress, UploadResult, describe_holder
from toolchain.remote.target import TargetProfile, open_transport
from toolchain.rtmaps import COMPONENT_NAME, DEFAULT_FOLDER, component_files, preprocessing_of

RECEIPT = "deploy.json"
MODEL_FILES = (FP32_NAME, INT8_NAME)
# the oldest opset onnxruntime supports at all
_MIN_OPSET = 7

Messages = Callable[[str], None]
ChecksCallback = Callable[[list[Check]], None]


# --- does the target's runtime load this artifact? --------------------------------------------


def _model_stamp(path: Path) -> tuple[int, dict[str, int]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return model.ir_version, {item.domain or "": item.version for item in model.opset_import}


def _probe_model(ir_version: int, opsets: dict[str, int]) -> str:
    """A one-node model with this IR version and these opset imports, base64 (sent to the target)."""
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    result = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [value], [result])
    model = helper.make_model(graph, ir_version=ir_version,
                              opset_imports=[helper.make_opsetid(domain, version)
                                             for domain, version in sorted(opsets.items())])
    return base64.b64encode(model.SerializeToString()).decode()


def artifact_stamp(artifact: Artifact) -> tuple[int, dict[str, int]]:
    """The highest IR version and opset per domain over the artifact's models."""
    ir_version, opsets = 0, {}
    for name in MODEL_FILES:
        model_ir, model_opsets = _model_stamp(artifact.directory / name)
        ir_version = max(ir_version, model_ir)
        for domain, version in model_opsets.items():
            opsets[domain] = max(opsets.get(domain, 0), version)
    return ir_version, opsets


def runtime_error_summary(text: str) -> str:
    """onnxruntime's load error without its C++ source location and signature, in one short line."""
    text = re.sub(r"^.*(?:\.cc|\.h):\d+ [^\n]*?\)\s+", "", " ".join(text.split()))
    sentences = [part.strip() for part in re.split(r"(?<=\.)\s+", text) if part.strip()]
    keep = [part for part in sentences if re.search(r"IR version|[Oo]pset \d+ is|support for domain", part)]
    return " ".join(keep or sentences[:1])[:300]


def check_runtime_loads(session: TargetSession, runtime: Runtime, artifact: Artifact) -> Check:
    """Ask the target's onnxruntime whether it loads the artifact's IR version and opset (before upload).

    Probe models carry exactly the artifact's stamps; when they fail, the artifact's opset and lower
    ones are probed at the lowest IR version each allows, so the refusal can name the export that this
    runtime does load: a lower --opset, or the torchscript exporter, which writes that lowest IR version
    (the dynamo exporter writes IR 10; onnxruntime 1.16 reads IR 9 at most).
    """
    from onnx.helper import find_min_ir_version_for, make_opsetid

    ir_version, opsets = artifact_stamp(artifact)
    opset = opsets.get("", 0)
    probes = {"artifact": _probe_model(ir_version, opsets)}
    for lower in range(opset, _MIN_OPSET - 1, -1):
        probes[f"opset-{lower}"] = _probe_model(find_min_ir_version_for([make_opsetid("", lower)]), {"": lower})
    answer = session.helper("probe", stdin=json.dumps({"models": probes}).encode(), env=runtime.env(),
                            label=f"onnxruntime {runtime.onnxruntime} probe")
    value = f"opset {opset}, IR {ir_version}"
    error = answer["results"]["artifact"]
    if error is None:
        return Check("opset", value, OK, f"onnxruntime {answer['onnxruntime']} loads it")
    loadable = [int(name.split("-")[1]) for name, result in answer["results"].items()
                if name.startswith("opset-") and result is None]
    dynamo = artifact.manifest.exporter == "dynamo"
    foreign = artifact.manifest.kind == "quantize"
    if loadable and foreign:
        fix = f"export the source model at opset {max(loadable)} or lower, then run `toolchain quantize` on it"
    elif loadable and (max(loadable) < opset or dynamo):
        fix = (f"export for this runtime: toolchain export --model {artifact.model} --opset {max(loadable)}"
               + (" --exporter torchscript" if dynamo else ""))
    else:
        fix = "provision a newer onnxruntime on the target (--onnxruntime VERSION)"
    return Check("opset", value, FAIL,
                 f"onnxruntime {answer['onnxruntime']} cannot load it: {runtime_error_summary(error)}", fix)


# --- deploy -----------------------------------------------------------------------------------


@dataclass
class DeployReport:
    """What a deploy did, for the table and --json."""

    target: str
    profile: str
    emulated: bool
    artifact_id: str
    model: str
    remote_dir: str = ""
    agent_dir: str = ""
    checks: list[Check] = field(default_factory=list)
    runtime: Runtime | None = None
    upload: UploadResult | None = None
    rtmaps_dir: str = ""
    rtmaps_upload: UploadResult | None = None
    cleaned: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bytes_sent(self) -> int:
        return sum(upload.bytes_sent for upload in (self.upload, self.rtmaps_upload) if upload is not None)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "profile": self.profile, "emulated": self.emulated,
                "artifact_id": self.artifact_id, "model": self.model, "remote_dir": self.remote_dir,
                "agent_dir": self.agent_dir,
                "checks": [check.to_dict() for check in self.checks],
                "runtime": self.runtime.to_dict() if self.runtime else None,
                "files_sent": self.upload.sent if self.upload else [],
                "files_unchanged": self.upload.unchanged if self.upload else [],
                "rtmaps": {"dir": self.rtmaps_dir, "component": f"{self.rtmaps_dir}/{COMPONENT_NAME}",
                           "model_path": f"{self.remote_dir}/{INT8_NAME}", "files_sent": self.rtmaps_upload.sent,
                           "files_unchanged": self.rtmaps_upload.unchanged} if self.rtmaps_upload else None,
                "bytes_sent": self.bytes_sent, "cleaned": self.cleaned, "seconds": round(self.seconds, 3)}


def _making_component(artifact: Artifact, target: str, rtmaps_dir: str, model_path: str) -> str:
    """What `deploy --rtmaps` says before it makes the component: it is made for the target's paths, always,
    and a folder `toolchain rtmaps` left in the artifact (made for this machine's paths) is not what is sent."""
    own = artifact.directory / DEFAULT_FOLDER
    made = f"making its RTMaps component for {target}:{rtmaps_dir} (it opens {model_path} there)"
    if own.is_dir():
        return f"{made}; the artifact's own {own} opens this machine's paths and is not sent"
    return f"the artifact has no RTMaps component yet (`toolchain rtmaps` writes one here): {made}"


def _receipt(artifact: Artifact, runtime: Runtime, python: str, folder: Path) -> LocalFile:
    """deploy.json: deterministic (no time stamp, no history), so an unchanged redeploy leaves it untouched."""
    path = folder / RECEIPT
    recorded = {key: value for key, value in runtime.to_dict().items() if key != "source"}
    path.write_text(json.dumps({"artifact_id": artifact.artifact_id, "model": artifact.model,
                                "files": {item.name: item.sha256 for item in artifact.files},
                                "python": python, "runtime": recorded},
                               indent=2, sort_keys=True) + "\n")
    return LocalFile(RECEIPT, path, sha256_file(path), path.stat().st_size)


def choose_runtime(session: TargetSession, index: WheelIndex, *, on_message: Messages,
                   on_progress: UploadProgress | None) -> Runtime:
    """The runtime already on the target that fits the profile's pins, or a freshly provisioned one."""
    profile = session.profile
    runtime = existing_runtime(session.require_facts(), profile.onnxruntime, profile.numpy)
    if runtime is not None:
        return runtime
    on_message(f"provisioning onnxruntime {profile.onnxruntime} + numpy {profile.numpy} from the host "
               f"(the target needs no internet)")
    return provision_runtime(session, profile.onnxruntime, profile.numpy, index, on_message=on_message,
                             on_progress=on_progress)


def deploy(profile: TargetProfile, artifact_dir: Path | Artifact, *, clean: bool = False, rtmaps: bool = False,
           accept_new_host_key: bool = False, break_lock: bool = False, index: WheelIndex | None = None,
           on_message: Messages = lambda _: None,
           on_checks: ChecksCallback = lambda _: None, on_progress: UploadProgress | None = None) -> DeployReport:
    """Deploy one artifact folder to the profile's target; see the module docstring for what lands where.

    `on_checks` receives the table rows as they are decided (preflight, runtime, opset), also when a
    check fails, so the caller can show them before the error. `break_lock` stops a run that holds the
    target's lock first (a stale one, typically). `rtmaps` also places the artifact's RTMaps component beside
    its models; it is made (and the manifest's preprocessing checked) before anything is written there.
    """
    started = time.perf_counter()
    artifact = load_artifact(artifact_dir)
    if rtmaps:
        preprocessing_of(artifact.manifest, str(artifact.directory / MANIFEST_NAME))
    report = DeployReport(target=profile.address, profile=profile.name, emulated=profile.emulated,
                          artifact_id=artifact.artifact_id, model=artifact.model)
    with open_transport(profile, accept_new_host_key=accept_new_host_key) as transport:
        session = TargetSession(transport, profile)
        facts = session.read_facts()
        report.checks = preflight_checks(facts, profile, artifact.total_bytes)
        on_checks(report.checks)
        require_passed(report.checks, transport.target)
        with session.locked(f"deploy of {artifact.model} {artifact.artifact_id}", break_lock=break_lock):
            if session.broken_lock:
                on_message(f"broke the lock of {describe_holder(session.broken_lock)}")
            report.runtime = choose_runtime(session, index or WheelIndex(), on_message=on_message,
                                            on_progress=on_progress)
            report.checks.append(Check("runtime", f"onnxruntime {report.runtime.onnxruntime}, numpy "
                                       f"{report.runtime.numpy}", OK, report.runtime.source))
            opset_check = check_runtime_loads(session, report.runtime, artifact)
            report.checks.append(opset_check)
            on_checks(report.checks)
            if opset_check.status == FAIL:
                raise TargetIncompatibleError(f"{transport.target}: artifact {opset_check.value}: {opset_check.note}",
                                              opset_check.hint)
            report.remote_dir = session.remote_path(artifact.artifact_id)
            report.agent_dir = session.agent_dir()
            with tempfile.TemporaryDirectory(prefix="toolchain-deploy-") as folder:
                component = []
                if rtmaps:
                    report.rtmaps_dir = f"{report.remote_dir}/{DEFAULT_FOLDER}"
                    on_message(_making_component(artifact, transport.target, report.rtmaps_dir,
                                                 f"{report.remote_dir}/{INT8_NAME}"))
                    (Path(folder) / DEFAULT_FOLDER).mkdir()
                    component = list(component_files(artifact, report.remote_dir, Path(folder) / DEFAULT_FOLDER)[0])
                files = [*artifact.files, _receipt(artifact, report.runtime, session.python, Path(folder))]
                on_message(f"uploading artifact {artifact.artifact_id} to {transport.target}:{report.remote_dir}")
                report.upload = session.upload(files, report.remote_dir, what=f"artifact {artifact.artifact_id}",
                                               on_progress=on_progress)
                if component:
                    on_message(f"uploading its RTMaps component to {transport.target}:{report.rtmaps_dir}")
                    report.rtmaps_upload = session.upload(component, report.rtmaps_dir,
                                                          what=f"RTMaps component of {artifact.artifact_id}",
                                                          on_progress=on_progress)
            if clean:
                answer = session.helper("clean", session.remote_path(), artifact.artifact_id,
                                        label="removing old artifacts")
                report.cleaned = list(answer["removed"])
    report.seconds = time.perf_counter() - started
    return report
