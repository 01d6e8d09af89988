"""`toolchain profile` and `toolchain optimize` on the emulated aarch64 Bluebox (Debian arm64 under qemu-user, sshd in
a network namespace of this module's own: tc-prof, 10.203.9.x).

On aarch64 onnxruntime rewrites the graphs otherwise than on the x86 host (FusedConv instead of NCHWc blocks, its
own NHWC int8 kernels), so the join of the profile to the file's nodes is checked there too, for both models. The
optimize run is the mechanism on a target with the Bluebox's architecture: every candidate measured there, the
log labeled emulated (qemu's latency says nothing about the board). Slow (qemu): one instance, two tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.fixtures.deploy import DeployArtifacts, artifact_copy
from tests.fixtures.emulated import emulation_prerequisites
from toolchain.artifacts import ArtifactStore, load_artifact, read_manifest
from toolchain.optimize.decide import CHOSEN, FAILED, LOST, NOT_MEASURED
from toolchain.optimize.run import EMULATED_NOTE, OptimizeSettings, optimize
from toolchain.profiling.system import ProfileSettings, profile_artifact
from toolchain.remote.deploy import deploy
from toolchain.remote.target import TargetProfile, load_profile

pytestmark = [pytest.mark.emulated, pytest.mark.slow]
INSTANCE, SUBNET = "prof", "10.203.9"


@pytest.fixture(scope="module")
def bluebox() -> Iterator[TargetProfile]:
    from toolchain.providers.emulated import EmulatedBluebox

    emulation_prerequisites()
    instance = EmulatedBluebox(INSTANCE, SUBNET)
    try:
        instance.up(fresh=True)
        yield instance.apply_to(load_profile("emulated"))
    finally:
        instance.purge()


@pytest.fixture(scope="module")
def deployed(bluebox: TargetProfile, deploy_artifacts: DeployArtifacts, tmp_path_factory) -> Path:
    artifact = artifact_copy(deploy_artifacts.loadable_by_1_16, tmp_path_factory.mktemp("emulated-store"))
    deploy(bluebox, artifact)
    return artifact


def test_the_per_node_join_covers_every_node_on_the_emulated_bluebox(bluebox: TargetProfile, deployed: Path) -> None:
    from toolchain.bench.system import TargetSystem

    run = profile_artifact(load_artifact(deployed), [(TargetSystem(bluebox), ProfileSettings(warmup=1, runs=3))])
    (place,) = run.document["places"]
    assert place["place"]["emulated"] is True and place["target"]["arch"] == "aarch64"
    assert place["ceilings"]["peak"] is None and "emulated" in place["ceilings"]["note"]
    layers = {layer["name"] for layer in run.document["layers"]}
    for variant in ("fp32", "int8"):
        record = place["variants"][variant]
        assert set(record["rows"]) == layers
        assert record["coverage"]["unattributed"] == 0 and record["coverage"]["none"] == 0, variant
        assert all(row["status"] != "fused" or record["rows"][row["into"]]["status"] == "own"
                   for row in record["rows"].values())
        profiled = record["profiled_nodes"]
        timed = sum(len(row["ort_nodes"]) for row in record["rows"].values() if row["status"] == "own")
        assert timed + len(record["extras"]) == profiled, variant
    # aarch64: the Conv + Relu pairs run as FusedConv (no NCHWc blocks, no reorder nodes)
    assert not [extra for extra in place["variants"]["fp32"]["extras"] if extra["op_type"].startswith("Reorder")]
    assert "EMULATED" in Path(place["roofline_svg"]).read_text()


def test_optimize_runs_on_the_emulated_bluebox_and_the_log_says_emulated(bluebox: TargetProfile,
                                                                         deployed: Path) -> None:
    store = ArtifactStore(deployed.parents[1])
    settings = OptimizeSettings(flavours=(("qoperator", "uint8"), ("qdq", "uint8")), rounds=1, warmup=1, runs=5,
                                profile_runs=3)
    result = optimize(bluebox, deployed, store, settings)
    log = result.log
    assert log["emulated"] is True and log["note"] == EMULATED_NOTE
    assert log["target"]["arch"] == "aarch64" and log["target"]["cpu"] == "Cortex-A72"
    verdicts = {entry["candidate"]: entry["verdict"] for entry in log["candidates"]}
    assert {"fp32", "int8-qoperator-u8s8", "int8-qdq-u8s8"} <= set(verdicts)
    assert set(verdicts.values()) <= {CHOSEN, LOST, FAILED, NOT_MEASURED} and list(verdicts.values()).count(CHOSEN) == 1
    assert all("target" in entry for entry in log["candidates"] if entry["verdict"] != NOT_MEASURED)
    assert set(log["latency_plans"]) == {"int8-qoperator-u8s8", "int8-qdq-u8s8"}
    manifest = read_manifest(result.folder)
    assert manifest.optimize["emulated"] is True and manifest.optimize["note"] == EMULATED_NOTE


def test_the_join_holds_with_the_bluebox_runtime_pin_onnxruntime_1_16_3(bluebox: TargetProfile, deployed: Path) -> None:
    """onnxruntime 1.16 names its NHWC int8 convolutions QLinearConv_token_N and their outputs after the file's
    nodes: the join finds them by that."""
    from toolchain.bench.system import TargetSystem

    pinned = bluebox.with_overrides(onnxruntime="1.16.3", numpy="1.26.4")
    deploy(pinned, deployed)
    run = profile_artifact(load_artifact(deployed), [(TargetSystem(pinned), ProfileSettings(warmup=1, runs=3))])
    (place,) = run.document["places"]
    assert place["target"]["onnxruntime"] == "1.16.3"
    for variant in ("fp32", "int8"):
        coverage = place["variants"][variant]["coverage"]
        assert coverage["unattributed"] == 0 and coverage["removed"] == 0 and coverage["none"] == 0, variant
    assert not [extra for extra in place["variants"]["int8"]["extras"] if extra["op_type"] == "QLinearConv"]
