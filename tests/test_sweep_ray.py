"""`toolchain sweep` end to end on real parts: a local Ray of 2 workers, Optuna in SQLite, real Fashion-MNIST
training, real exports and local benches. The sweep is stopped with SIGINT mid-run and the same command run
again: no COMPLETE trial runs twice, the interrupted one is run again, the Pareto front comes from the stored
trials (and agrees with Optuna's own), and the report shows every trial with links to its artifact."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from toolchain.sweep.space import load_space
from toolchain.sweep.trial import training_key

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
# 1,000 training images, one epoch, batch 16: hps-06-0.25x reaches ~44 % in ~3 s (measured; 600 images at
# batch 32 stayed at chance); 100 eval images keep each export at ~10 s on 2 cores
TINY = """
[sweep]
name = "tiny"
family = "hps"
trials = 4
sampler = "nsga2"
seed = 0

[space]
depth = [[1, 1, 1, 1], [1, 2, 1, 1]]
width = [0.25, 0.5]

[budget]
epochs = 1
train_limit = 1000
eval_limit = 200
batch_size = 16
lr = 0.05

[export]
eval_count = 100
max_drop = 10.0

[bench]
warmup = 5
runs = 50
"""


def _command(space: Path, artifacts: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", "from toolchain.cli.main import run; run()", "sweep", "run", str(space),
            "--artifacts", str(artifacts), "--workers", "2", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}


def _in_process(capsys, *args: str | Path) -> tuple[int, str, str]:
    from toolchain.cli.main import run

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run([str(arg) for arg in args])
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


def _summary(artifacts: Path, name: str = "tiny") -> dict | None:
    path = artifacts / "sweeps" / name / "sweep.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The tiny sweep, interrupted with SIGINT after its first COMPLETE trial, then rerun to the end."""
    if not FASHION.is_dir():
        pytest.fail(f"{FASHION} is missing: apt-get install dataset-fashion-mnist")
    root = tmp_path_factory.mktemp("sweep")
    space, artifacts = root / "tiny.toml", root / "artifacts"
    space.write_text(TINY)
    first = subprocess.Popen(_command(space, artifacts), cwd=root, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and first.poll() is None:
        found = _summary(artifacts)
        if found and found["counts"]["COMPLETE"] >= 1:
            break
        time.sleep(0.1)
    assert first.poll() is None, f"the sweep ended before it could be interrupted: {first.communicate()}"
    first.send_signal(signal.SIGINT)
    out1, err1 = first.communicate(timeout=90)
    interrupted = _summary(artifacts)
    second = subprocess.run(_command(space, artifacts, "--json"), cwd=root, env=_env(), capture_output=True,
                            text=True, timeout=240)
    assert second.stdout, f"the rerun printed no summary: {second.stderr}"
    return {"root": root, "space": space, "artifacts": artifacts, "first": (first.returncode, out1, err1),
            "interrupted": interrupted, "second": second, "final": json.loads(second.stdout)}


def test_an_interrupted_sweep_stops_with_one_error_line_and_keeps_its_finished_trials(sweep):
    code, _, err = sweep["first"]
    assert code == 130, err
    assert "error: interrupted" in err and "hint: " in err and "Traceback" not in err
    states = [t["state"] for t in sweep["interrupted"]["trials"]]
    assert states.count("COMPLETE") >= 1
    assert "RUNNING" not in [t["state"] for t in sweep["final"]["trials"]]


def test_a_local_ray_serves_on_loopback_only(sweep, tmp_path):
    # every trial ran on a Ray node whose address is 127.0.0.1 (Ray's default is the LAN address)
    assert {t["details"].get("ray_node_ip") for t in sweep["final"]["trials"] if t["state"] == "COMPLETE"} == {
        "127.0.0.1"}
    # and starting one connects to nothing else: no route probe towards 8.8.8.8, no cloud metadata server
    trace = tmp_path / "connect.txt"
    probe = ("from toolchain.sweep.study import _start_ray\nstop = _start_ray(None, 1)\nimport ray\n"
             "print(ray.get(ray.remote(num_cpus=1)(lambda: 1).remote()))\nstop()\n")
    done = subprocess.run([*STRACE, "-o", str(trace), sys.executable, "-c", probe], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr
    assert_loopback_only(trace)


# every call that sends to an address: connect (TCP, and the UDP "route probes"), and the sends a DNS lookup makes
STRACE = ["strace", "-f", "--seccomp-bpf", "-qq", "-e", "trace=connect,sendto,sendmsg,sendmmsg"]


def assert_loopback_only(*traces: Path) -> None:
    text = "".join(trace.read_text(errors="replace") for trace in traces)
    addresses = set(re.findall(r'inet_addr\("([0-9.]+)"\)', text))
    addresses |= set(re.findall(r'inet_pton\(AF_INET6, "([^"]+)"', text))
    assert addresses and all(a.startswith("127.") or a.startswith("::ffff:127.") or a == "::1" for a in addresses), addresses


def test_the_rerun_finishes_the_study_and_runs_no_complete_trial_twice(sweep):
    assert sweep["second"].returncode == 0, sweep["second"].stderr
    final = sweep["final"]
    complete = [t for t in final["trials"] if t["state"] == "COMPLETE"]
    # two depths x two widths, each point COMPLETE exactly once
    points = sorted((t["params"]["depth"], t["params"]["width"]) for t in complete)
    assert points == [("1.1.1.1", 0.25), ("1.1.1.1", 0.5), ("1.2.1.1", 0.25), ("1.2.1.1", 0.5)]
    before = {t["number"]: t for t in sweep["interrupted"]["trials"] if t["state"] == "COMPLETE"}
    after = {t["number"]: t for t in complete}
    for number, trial in before.items():  # finished before the interruption: the very same record, not rerun
        assert after[number]["completed"] == trial["completed"]
        assert after[number]["details"]["worker_pid"] == trial["details"]["worker_pid"]
    # one training folder per model: the rerun trained nothing the first run had finished
    spec = load_space(sweep["space"])
    for trial in complete:
        runs = list((sweep["artifacts"] / "train" / trial["model"] / "fashion-mnist").iterdir())
        assert [run.name for run in runs] == [f"sweep-{training_key(spec, trial['model'])}"]


def test_a_trial_running_at_the_interruption_is_recorded_and_run_again_as_a_new_trial(sweep):
    # marked at the Ctrl-C, or (where that was cut short itself) by the rerun before it asked anything
    failed = [t for t in sweep["final"]["trials"] if t["state"] == "FAIL"]
    assert all("interrupted" in t["error"] for t in failed)
    interrupted = [t for t in failed if t["model"]]  # sent to Ray (an only-asked one never ran: not queued)
    assert interrupted, "SIGINT came when no trial was in flight"
    assert all(t["details"]["requeued"] == bool(t["model"]) for t in failed)
    final = {t["number"]: t for t in sweep["final"]["trials"]}
    for trial in interrupted:
        retried = [t for t in final.values() if t["details"].get("retry_of") == trial["number"]]
        assert len(retried) == 1 and retried[0]["state"] == "COMPLETE" and retried[0]["params"] == trial["params"]
        assert final[trial["number"]]["state"] == "FAIL"  # its own record stays as it was


def test_every_trial_is_a_normal_artifact_with_a_bench_record(sweep):
    for trial in (t for t in sweep["final"]["trials"] if t["state"] == "COMPLETE"):
        folder = Path(trial["artifact"])
        manifest = json.loads((folder / "manifest.json").read_text())
        assert folder.parent.name == trial["model"] and folder.parent.parent == sweep["artifacts"]
        assert manifest["model"] == trial["model"]
        record = json.loads(Path(trial["bench_record"]).read_text())
        assert Path(trial["bench_record"]).parent == folder / "bench"
        int8 = next(e for e in record["results"] if e["variant"] == "int8" and e["threads"] == 1)
        assert trial["values"] == {"top1_pct": int8["accuracy"]["top1"], "p50_ms": int8["latency_ms"]["p50"],
                                   "int8_bytes": int8["model_bytes"]}
        assert int8["model_bytes"] == (folder / "model.int8.onnx").stat().st_size


def test_the_pareto_front_is_computed_from_the_stored_trials_and_matches_optunas(sweep, capsys):
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{sweep['artifacts'] / 'sweeps/tiny/study.db'}")
    assert sorted(t.number for t in study.best_trials) == sweep["final"]["pareto"]
    code, out, err = _in_process(capsys, "sweep", "show", sweep["space"], "--artifacts", sweep["artifacts"], "--json")
    assert code == 0, err
    assert json.loads(out)["pareto"] == sweep["final"]["pareto"]


def test_the_report_shows_every_trial_and_the_front_with_links_to_the_artifacts(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    code, _, err = _in_process(capsys, "report", "--artifacts", sweep["artifacts"], "--output", out)
    assert code == 0, err
    document = json.loads((out / "report.json").read_text())
    (stored,) = [item for item in document["sweeps"] if item["name"] == "tiny"]
    assert stored["pareto"] == sweep["final"]["pareto"]
    html = (out / "report.html").read_text()
    table = html.split('data-table="sweep-trials"')[1].split("</table>")[0]
    listed = [t for t in sweep["final"]["trials"] if t["state"] != "PRUNED"]
    assert table.count("<tr>") == len(listed) + 1  # the header row and one per trial
    for trial in (t for t in listed if t["state"] == "COMPLETE"):
        artifact_id = Path(trial["artifact"]).name
        assert f'href="#a-{artifact_id}"' in table and f'id="a-{artifact_id}"' in html
    assert html.count('data-plot="sweep-pareto"') == 1


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(sweep):
    # a second sweep over the same store: its 0.25x point is the first sweep's model with the same budget, so
    # its training and export are reused (normal artifacts); a file where the 0.125x trial's training folder
    # must go makes the OS refuse it: that trial fails, the sweep goes on and ends well
    space = sweep["root"] / "more.toml"
    space.write_text(TINY.replace('name = "tiny"', 'name = "more"').replace(
        "depth = [[1, 1, 1, 1], [1, 2, 1, 1]]\nwidth = [0.25, 0.5]", "depth = [[1, 1, 1, 1]]\nwidth = [0.125, 0.25]"))
    artifacts, spec = sweep["artifacts"], load_space(space)
    blocked = artifacts / "train" / "hps-06-0.125x" / "fashion-mnist" / f"sweep-{training_key(spec, 'hps-06-0.125x')}"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")
    done = subprocess.run(_command(space, artifacts, "--json"), env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    trials = {t["model"]: t for t in json.loads(done.stdout)["trials"] if t["state"] != "PRUNED"}
    assert trials["hps-06-0.125x"]["state"] == "FAIL" and "cannot create run folder" in trials["hps-06-0.125x"]["error"]
    assert trials["hps-06-0.125x"]["hint"]
    assert "failed (hps-06-0.125x)" in done.stderr
    reused = trials["hps-06-0.25x"]
    first = next(t for t in sweep["final"]["trials"] if t["model"] == "hps-06-0.25x" and t["state"] == "COMPLETE")
    assert reused["state"] == "COMPLETE" and reused["artifact"] == first["artifact"]
    assert reused["details"]["export_cached"] and not reused["details"]["trained_now"]


# --- an existing Ray cluster (--ray-address) ----------------------------------------------------

RAY = Path(sys.executable).with_name("ray")
# the cached half of the tiny space: both points trained and exported by the `sweep` fixture (same budget and
# seed: the same training folders and artifacts), so a trial is a Ray task that finds its work done
CACHED = ("depth = [[1, 1, 1, 1], [1, 2, 1, 1]]\nwidth = [0.25, 0.5]", "depth = [[1, 1, 1, 1]]\nwidth = [0.25, 0.5]")


def _space(sweep: dict, name: str, trials: int) -> Path:
    space = sweep["root"] / f"{name}.toml"
    space.write_text(TINY.replace('name = "tiny"', f'name = "{name}"').replace("trials = 4", f"trials = {trials}")
                     .replace(*CACHED))
    return space


def _session(sid: int) -> list[tuple[int, str]]:
    """The processes of session `sid` (pid, command line)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                found.append((int(stat.parent.name), (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                              .decode(errors="replace")))
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
    return found


def _children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


@pytest.fixture
def ray_cluster(tmp_path_factory):
    """A separate Ray cluster on this machine: `ray start --head --block` on 127.0.0.1 at a free port, its own
    temporary folder and token, no dashboard, usage stats off, every process under strace (connects and
    sends), in a session of its own. Stopped by its pid (SIGTERM: `--block` stops every process it started)
    rather than `ray stop`, which would stop every Ray on this machine, other users' too."""
    from tests.fixtures.sshd import free_port
    from toolchain.sweep.study import LOCAL_RAY_ENV

    temp = Path(tempfile.mkdtemp(prefix="tcrc-", dir="/tmp"))  # Ray's socket paths must fit in 107 bytes
    token = temp / "token"
    token.write_text(os.urandom(32).hex())
    port, trace = free_port(), temp / "cluster.trace"
    env = {**_env(), **LOCAL_RAY_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    log = open(temp / "cluster.log", "w")
    tracer = subprocess.Popen([*STRACE, "-o", str(trace), str(RAY), "start", "--head", "--block",
                               "--node-ip-address=127.0.0.1", f"--port={port}", f"--temp-dir={temp}", "--num-cpus=2",
                               "--include-dashboard=false", "--disable-usage-stats",
                               f"--dashboard-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in (temp / "cluster.log").read_text():
            assert tracer.poll() is None and time.monotonic() < deadline, (temp / "cluster.log").read_text()
            time.sleep(0.2)
        (head,) = _children(tracer.pid)
        raylet = [line for _, line in _session(tracer.pid) if "/raylet/raylet " in line]
        node_id = re.search(r"--node_id=([0-9a-f]+)", raylet[0]).group(1)
        yield {"address": f"127.0.0.1:{port}", "node_id": node_id, "env": {
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}, "trace": trace, "session": tracer.pid,
            "head": head}
        os.kill(head, signal.SIGTERM)
        tracer.wait(timeout=60)
        time.sleep(1)
        assert _session(tracer.pid) == [], "the cluster left processes running"
    finally:
        if tracer.poll() is None:  # a failed start or stop: by pid, every process of its own session
            for pid, _ in _session(tracer.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            tracer.wait(timeout=30)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_sweep_runs_its_trials_on_an_existing_ray_cluster(sweep, ray_cluster, tmp_path):
    space, trace = _space(sweep, "cluster", 2), tmp_path / "driver.trace"
    started = time.monotonic()
    done = subprocess.run([*STRACE, "-o", str(trace),
                           *_command(space, sweep["artifacts"], "--ray-address", ray_cluster["address"], "--json")],
                          env={**_env(), **ray_cluster["env"]}, capture_output=True, text=True, timeout=180)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert f"on Ray at {ray_cluster['address']}" in done.stderr
    trials = [t for t in json.loads(done.stdout)["trials"] if t["state"] != "PRUNED"]
    assert sorted(t["model"] for t in trials) == ["hps-06-0.25x", "hps-06-0.5x"]
    for trial in trials:
        assert trial["state"] == "COMPLETE", trial
        # the cluster's own node ran it (its raylet's --node_id), and the driver recorded which cluster
        assert trial["details"]["ray_node_id"] == ray_cluster["node_id"]
        assert trial["details"]["ray_cluster"] == ray_cluster["address"]
        assert trial["details"]["ray_node_ip"] == "127.0.0.1"
    # the driver and every process of the cluster: loopback only (no 8.8.8.8 route probe, no DNS lookup of
    # usage-stats.ray.io, no cloud metadata server)
    assert_loopback_only(trace, ray_cluster["trace"])
    assert seconds < 90, seconds


def test_an_unreachable_ray_address_is_one_error_and_fails_fast(sweep, tmp_path):
    from tests.fixtures.sshd import LOOPBACK, free_port

    space = _space(sweep, "nowhere", 1)
    silent = socket.create_server((LOOPBACK, 0))  # accepts (its backlog does) and never answers
    try:
        for address, says in ((f"{LOOPBACK}:{free_port()}", "refused"),
                              (f"{LOOPBACK}:{silent.getsockname()[1]}", "no answer within 5 s")):
            started = time.monotonic()
            done = subprocess.run(_command(space, tmp_path / "store", "--ray-address", address), env=_env(),
                                  capture_output=True, text=True, timeout=60)
            seconds = time.monotonic() - started
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 1, done.stderr
            assert lines[-2] == f"error: cannot reach the Ray cluster at {address}: " + (
                "Connection refused" if says == "refused" else says), done.stderr
            assert lines[-1].startswith("hint: ") and "Traceback" not in done.stderr
            assert seconds < 30, seconds
    finally:
        silent.close()


# --- latency measured on a target -----------------------------------------------------------------


def test_a_sweep_measures_latency_on_the_target_it_names(sweep, loopback_sshd, tmp_path):
    # one cached trial; its INT8 latency objective comes from the bench agent on the loopback sshd target,
    # after the sweep deployed the trial's artifact there
    from tests.fixtures.sshd import LOOPBACK

    space, workdir = _space(sweep, "ontarget", 1), tmp_path / "work"
    profile = loopback_sshd.profile_file(tmp_path, "sweep-board", loopback_sshd.known_hosts(tmp_path),
                                         platform.machine())
    done = subprocess.run(_command(space, sweep["artifacts"], "--json", "--target", str(profile)), env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    address = f"root@{LOOPBACK}:{loopback_sshd.port}"
    assert f"latency on sweep-board ({address})" in done.stderr
    (trial,) = [t for t in json.loads(done.stdout)["trials"] if t["state"] != "PRUNED"]
    assert trial["state"] == "COMPLETE", trial
    assert trial["details"]["target"] == "sweep-board" and trial["details"]["target_address"] == address
    record = json.loads(Path(trial["bench_record"]).read_text())
    artifact_id = Path(trial["artifact"]).name
    assert record["remote"]["address"] == address and record["remote"]["remote_dir"] == f"{workdir}/{artifact_id}"
    assert (workdir / artifact_id / "deploy.json").is_file()  # deployed there first
    int8 = next(e for e in record["results"] if e["variant"] == "int8" and e["threads"] == 1)
    assert trial["values"]["p50_ms"] == int8["latency_ms"]["p50"]
    # not the local bench the first sweep stored for the same artifact
    local = [t["bench_record"] for t in sweep["final"]["trials"] if t["artifact"] == trial["artifact"]]
    assert local and trial["bench_record"] not in local
