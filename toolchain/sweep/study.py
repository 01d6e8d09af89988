"""`toolchain sweep`: an Optuna study in SQLite whose trials run on Ray, latency measured on one target.

    artifacts/sweeps/<name>/study.db     the Optuna storage (the record every resume starts from)
    artifacts/sweeps/<name>/space.json   the space the study was created with (a rerun must match it)
    artifacts/sweeps/<name>/sweep.json   every trial and the Pareto front, rewritten after each trial (the report reads it)

The driver asks Optuna for parameters (ask/tell), sends each trial to a Ray task (train + export, see
trial.py), and measures each finished trial's INT8 model itself, one at a time, on the sweep's target
(this machine by default): every latency of a study comes from one place, never two benches at once.
A trial that fails is told FAIL with its error; an interrupted one (Ctrl-C here, or a driver killed) is
told FAIL as interrupted and its parameters are queued again, so a rerun of the same command finishes
the study without running a COMPLETE trial twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from toolchain import interrupts
from toolchain.errors import ArtifactError, ToolchainError, UsageError
from toolchain.fsutil import atomic_write_json, ensure_writable_dir
from toolchain.sweep.pareto import pareto_front
from toolchain.sweep.space import DIRECTIONS, OBJECTIVES, SweepSpec, trial_model
from toolchain.sweep.trial import run_trial

if TYPE_CHECKING:
    import optuna

    from toolchain.bench.system import BenchSystem

SWEEP_DIR = "sweeps"
SUMMARY_NAME = "sweep.json"
SPACE_NAME = "space.json"
STUDY_NAME = "study.db"
SUMMARY_SCHEMA = "toolchain.sweep/1"
INTERRUPTED = "interrupted before it finished (the sweep was stopped)"
# asks in a row that only repeat finished points before the sweep says the sampler is stuck
MAX_REPEATS = 200
# how often the driver, waiting for a trial, looks for a Ctrl-C that was lost on its way (seconds)
WAIT_POLL_S = 0.5

Events = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class SweepOutcome:
    """Where a sweep's records are and what it holds now."""

    folder: Path
    summary: dict[str, Any]
    ran: int  # trials this invocation ran (complete or failed)


def sweep_folder(artifacts: Path, name: str) -> Path:
    return artifacts / SWEEP_DIR / name


@contextlib.contextmanager
def _sweep_lock(folder: Path) -> Iterator[None]:
    # one driver per study: a second one would take the first one's RUNNING trials for interrupted ones
    path = folder / "lock"
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()[:20]
            raise UsageError(f"sweep {folder.name} is running already (process {holder or '?'})",
                             "wait for it, or stop it with Ctrl-C; a rerun then continues the study") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UsageError("optuna is not installed", "pip install optuna (see pyproject.toml)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_study(spec: SweepSpec, folder: Path, create: bool = True) -> "optuna.Study":
    """The study in ``folder``/study.db (created if missing and ``create``)."""
    optuna = _optuna()
    storage_path = folder / STUDY_NAME
    if not create and not storage_path.exists():
        raise ArtifactError(f"no sweep study in {folder}", "start it with `toolchain sweep run SPACE.toml`")
    if spec.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=min(10, spec.trials))
    else:
        sampler = optuna.samplers.NSGAIISampler(population_size=spec.population, seed=spec.seed)
    try:
        return optuna.create_study(study_name=spec.name, storage=f"sqlite:///{storage_path}", sampler=sampler,
                                   directions=list(DIRECTIONS), load_if_exists=True)
    except (optuna.exceptions.OptunaError, ValueError) as error:
        raise ArtifactError(f"cannot open the sweep study {storage_path}: {_first_line(error)}",
                            "it was written by another sweep or is damaged: move it away to start over") from None
    except Exception as error:  # SQLAlchemy's OperationalError and friends: a locked, full or corrupt file
        raise ArtifactError(f"cannot open the sweep study {storage_path}: {type(error).__name__}: {_first_line(error)}",
                            "check the disk and that no other program holds the file; move it away to start over"
                            ) from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _check_same_space(spec: SweepSpec, folder: Path) -> None:
    import json

    stored_path = folder / SPACE_NAME
    current = {k: v for k, v in spec.to_dict().items() if k not in ("trials", "source")}
    if stored_path.exists():
        try:
            stored = json.loads(stored_path.read_text())
        except (OSError, ValueError) as error:
            raise ArtifactError(f"cannot read {stored_path}: {_first_line(error)}",
                                "it is damaged: move the sweep folder away to start over") from None
        if stored != json.loads(json.dumps(current)):
            changed = sorted(k for k in set(stored) | set(current) if stored.get(k) != json.loads(json.dumps(current)).get(k))
            raise UsageError(f"sweep {spec.name} exists in {folder} with another {', '.join(changed)}",
                             "only sweep.trials may change when a sweep continues: give the new space another "
                             "sweep.name")
    else:
        atomic_write_json(stored_path, current)


def _distributions(spec: SweepSpec) -> dict[str, Any]:
    optuna = _optuna()
    return {key: optuna.distributions.CategoricalDistribution(values) for key, values in spec.choices.items()}


def _key(params: dict[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


def recover_interrupted(study: "optuna.Study") -> list[int]:
    """Tell every trial left RUNNING (a driver stopped or killed mid-trial) FAIL as interrupted, and queue the
    parameters of those that had started again; the numbers of the trials so marked."""
    optuna = _optuna()
    marked = []
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # a trial that reached Ray (it has its model) ran in part: its point is queued again; one only asked, not
        _mark_interrupted(study, frozen.number, frozen._trial_id, frozen.params if "model" in frozen.user_attrs else {})
        marked.append(frozen.number)
    return marked


def _mark_interrupted(study: "optuna.Study", number: int, trial_id: int, params: dict[str, Any]) -> None:
    optuna = _optuna()
    # optuna.trial.Trial(study, id) is how Optuna's own integrations reach a trial by id after the fact
    trial = optuna.trial.Trial(study, trial_id)
    trial.set_user_attr("error", INTERRUPTED)
    trial.set_user_attr("requeued", bool(params))
    study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    if params:
        study.enqueue_trial(params, user_attrs={"retry_of": number}, skip_if_exists=False)


def _counted(trial: Any) -> bool:
    """A trial that used one of the budget's trials: complete, or failed for a reason of its own."""
    state = trial.state.name
    return state == "COMPLETE" or (state == "FAIL" and trial.user_attrs.get("error") != INTERRUPTED)


def trial_record(trial: Any) -> dict[str, Any]:
    """One trial as the summary and the report show it."""
    attrs = dict(trial.user_attrs)
    values = dict(zip(OBJECTIVES, trial.values)) if trial.values else None
    return {"number": trial.number, "state": trial.state.name, "params": dict(trial.params),
            "values": values, "model": attrs.pop("model", None), "artifact": attrs.pop("artifact", None),
            "bench_record": attrs.pop("bench_record", None), "error": attrs.pop("error", None),
            "hint": attrs.pop("hint", None),
            "started": trial.datetime_start.isoformat(timespec="seconds") if trial.datetime_start else None,
            "completed": trial.datetime_complete.isoformat(timespec="seconds") if trial.datetime_complete else None,
            "details": attrs}


def _record(study: "optuna.Study", number: int) -> dict[str, Any]:
    return trial_record(study.get_trials(deepcopy=False)[number])


def summarize(spec: SweepSpec, study: "optuna.Study", folder: Path) -> dict[str, Any]:
    """Every stored trial and the Pareto front computed from the COMPLETE ones; written to sweep.json."""
    trials = [trial_record(t) for t in study.get_trials(deepcopy=False)]
    for record in trials:
        if record["state"] == "COMPLETE" and len(record["values"] or ()) != len(OBJECTIVES):
            raise ArtifactError(f"the sweep study {folder / STUDY_NAME} is damaged: trial {record['number']} is "
                                f"complete without its {len(OBJECTIVES)} objective values",
                                "the file was changed outside the sweep: restore it, or move the sweep folder "
                                "away and run the sweep again")
    complete = {t["number"]: [t["values"][k] for k in OBJECTIVES] for t in trials if t["state"] == "COMPLETE"}
    front = pareto_front(complete, DIRECTIONS)
    summary = {"schema": SUMMARY_SCHEMA, "name": spec.name, "written": datetime.now(timezone.utc).isoformat(
               timespec="seconds"), "folder": str(folder), "storage": str(folder / STUDY_NAME),
               "objectives": list(OBJECTIVES), "directions": list(DIRECTIONS), "space": spec.to_dict(),
               "trials": trials, "pareto": front,
               "counts": {state: sum(t["state"] == state for t in trials)
                          for state in ("COMPLETE", "FAIL", "PRUNED", "RUNNING", "WAITING")}}
    atomic_write_json(folder / SUMMARY_NAME, summary)
    return summary


# A local Ray talks to this machine's loopback only (measured with strace -e connect, Ray 2.60). Left alone it
# finds "its" address by routing towards 8.8.8.8 and serves on the LAN address, and its dashboard process asks
# the cloud metadata servers (169.254.169.254, metadata.google.internal) which cloud it is on, even with usage
# stats off. Ray's processes copy the environment when ray.init starts them, so these are set for that call only.
LOCAL_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage reports to Ray's servers
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's own switch for "no cluster": the node address is 127.0.0.1
    # the metadata probes use `requests`, which honours these: sent to a closed loopback port, refused at once
    "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": "",
    # a cluster made by `ray start` (not by ray.init) posts "usage disabled" to usage-stats.ray.io from its
    # dashboard process, resolving that name first (measured with strace): the report goes to a closed port
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
}
# how long the driver waits for an existing cluster's GCS to answer before it says it cannot reach it
CLUSTER_CONNECT_TIMEOUT_S = 5.0


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _cluster_endpoint(address: str) -> tuple[str, int] | None:
    """host and port of a `--ray-address` (`host:port`, `ray://host:port`, `[v6]:port`); None for `auto` and
    anything Ray resolves itself."""
    import re

    match = re.fullmatch(r"(?:ray://)?(\[[0-9a-fA-F:.]+\]|[^:/\s]+):([0-9]{1,5})/?", address.strip())
    if match is None or not 0 < int(match.group(2)) < 65536:
        return None
    return match.group(1).strip("[]"), int(match.group(2))


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# HTTP/2's client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS) answers with its SETTINGS
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def check_cluster(address: str, timeout: float = CLUSTER_CONNECT_TIMEOUT_S) -> None:
    """Fail fast where `--ray-address` cannot be a Ray cluster: nothing listens, no route, or what answers
    does not speak gRPC. Ray itself keeps retrying a dead GCS for minutes (measured: > 2 min, Ray 2.60)."""
    import socket

    endpoint = _cluster_endpoint(address)
    if endpoint is None:
        return
    host, port = endpoint
    hint = ("start the cluster (`ray start --head --port PORT` on the head node) or check the address with "
            "`ray status --address ADDRESS`; drop --ray-address to run on a local Ray")
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            if os.environ.get("RAY_USE_TLS", "0") not in ("", "0"):
                return  # a TLS GCS answers the preface only after the handshake: Ray's own check follows
            connection.settimeout(timeout)
            connection.sendall(_H2_PREFACE)
            frame = connection.recv(9)
    except socket.timeout:
        raise ArtifactError(f"cannot reach the Ray cluster at {address}: no answer within {timeout:g} s", hint) from None
    except OSError as error:
        raise ArtifactError(f"cannot reach the Ray cluster at {address}: {error.strerror or error}", hint) from None
    if len(frame) < 4 or frame[3] != 0x04:
        raise ArtifactError(f"cannot reach the Ray cluster at {address}: what listens there is not a Ray GCS "
                            "(it does not speak gRPC)", hint)


def _start_ray(address: str | None, workers: int) -> Callable[[], None]:
    # Ray reports usage to its own servers unless told not to: this tool talks to no one it was not told to
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    temp = None
    try:
        if address:
            check_cluster(address)
            endpoint = _cluster_endpoint(address)
            # a cluster on this machine's loopback: the driver's own address is 127.0.0.1 too (left to itself
            # Ray rewrites 127.0.0.1 to the LAN address, found by routing towards 8.8.8.8, and cannot connect)
            loopback = endpoint is not None and _is_loopback(endpoint[0])
            with _environment(LOCAL_RAY_ENV if loopback else {}):
                import ray

                ray.init(address=address, log_to_driver=False, logging_level="error")
        else:
            # a short folder of our own: Ray's socket paths must fit in 107 bytes
            temp = tempfile.mkdtemp(prefix="tcray-", dir="/tmp")
            with _environment(LOCAL_RAY_ENV):
                import ray  # its constants are read on import: inside the environment above

                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="error",
                         _temp_dir=temp, _node_ip_address="127.0.0.1")
    except ImportError:
        raise UsageError("ray is not installed", "pip install ray (see pyproject.toml)") from None
    except ToolchainError:
        raise
    except Exception as error:  # ConnectionError, RuntimeError, ray's own: one line, where and what to do
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
        where = f"Ray cluster at {address}" if address else "a local Ray instance"
        hint = ("check --ray-address (ray status on the head node), or drop it to run locally" if address
                else "check /tmp has room and that `python -c 'import ray'` works")
        if "AuthToken" in str(error) or type(error).__name__ == "AuthenticationError":
            hint = ("the cluster uses token authentication: set RAY_AUTH_MODE=token and its token "
                    "(RAY_AUTH_TOKEN, or the file RAY_AUTH_TOKEN_PATH names) for this command")
        raise ArtifactError(f"cannot start {where}: {type(error).__name__}: {_first_line(error)}", hint) from None

    def stop() -> None:
        ray.shutdown()  # a driver's connection only: an existing cluster keeps running
        if temp:
            shutil.rmtree(temp, ignore_errors=True)

    return stop


def _objectives(document: dict[str, Any], threads: int) -> tuple[float, float, float]:
    for entry in document["results"]:
        if entry["variant"] == "int8" and entry["threads"] == threads:
            return float(entry["accuracy"]["top1"]), float(entry["latency_ms"]["p50"]), float(entry["model_bytes"])
    raise ToolchainError(f"the bench record has no INT8 run at {threads} thread(s)", "rerun the sweep")


def run_sweep(spec: SweepSpec, artifacts: Path, system: "BenchSystem", *, workers: int = 2,
              ray_address: str | None = None, data_dir: Path | None = None,
              prepare: Callable[[Path], None] = lambda _: None,
              on_event: Events = lambda kind, data: None) -> SweepOutcome:
    """Run (or continue) a sweep until ``spec.trials`` trials are complete or failed, or the space is used up.

    ``prepare(folder)`` runs before a trial's bench (a deploy for a remote target); ``on_event`` gets
    "recovered", "started", "finished" and "failed" with the trial's record.
    """
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}", "pass e.g. --workers 2")
    folder = ensure_writable_dir(sweep_folder(artifacts, spec.name), "--artifacts")
    with _storage_errors(folder):
        return _run_locked(spec, artifacts, folder, system, workers, ray_address, data_dir, prepare, on_event)


def show_sweep(spec: SweepSpec, artifacts: Path) -> dict[str, Any]:
    """A sweep's summary read again from its study (sweep.json rewritten): `toolchain sweep show`."""
    folder = sweep_folder(artifacts, spec.name)
    with _storage_errors(folder), interrupts.deferred():
        return summarize(spec, open_study(spec, folder, create=False), folder)


@contextlib.contextmanager
def _storage_errors(folder: Path) -> Iterator[None]:
    """A full disk, a locked or damaged study.db met after it opened: one error naming the file."""
    optuna = _optuna()
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (optuna.exceptions.StorageInternalError, SQLAlchemyError) as error:
        # the trials told so far are in the file
        raise ArtifactError(f"the sweep study {folder / STUDY_NAME} failed: {type(error).__name__}: "
                            f"{_first_line(error)}", "check the disk has room and that nothing else writes the "
                            "file, then rerun the same command: finished trials are kept") from None


def _run_locked(spec: SweepSpec, artifacts: Path, folder: Path, system: "BenchSystem", workers: int,
                ray_address: str | None, data_dir: Path | None, prepare: Callable[[Path], None],
                on_event: Events) -> SweepOutcome:
    from toolchain.bench.settings import BenchSettings
    from toolchain.bench.system import bench

    optuna = _optuna()
    settings = BenchSettings(threads=(spec.bench.threads,), batch=1, warmup=spec.bench.warmup, runs=spec.bench.runs)
    with _sweep_lock(folder):
        with interrupts.deferred():  # storage calls are never cut by Ctrl-C (see toolchain.interrupts)
            _check_same_space(spec, folder)
            study = open_study(spec, folder)
            recovered = recover_interrupted(study)
            distributions = _distributions(spec)
            stored = study.get_trials(deepcopy=False)
        if recovered:
            on_event("recovered", {"numbers": recovered})
        seen = {_key(t.params) for t in stored if _counted(t)}
        counted = sum(_counted(t) for t in stored)
        grid = {_key(point) for point in spec.grid()}
        if counted >= spec.trials or grid <= seen:
            with interrupts.deferred():
                return SweepOutcome(folder, summarize(spec, study, folder), 0)
        stop_ray = _start_ray(ray_address, workers)  # says so in one line where ray is missing
        import ray

        remote = ray.remote(num_cpus=1, max_retries=0)(run_trial)
        cluster = ray.get_runtime_context().gcs_address  # where the trials run (the GCS of that Ray)
        in_flight: dict[Any, Any] = {}
        ran, repeats = 0, 0

        def failed(trial: Any, message: str, hint: str) -> None:  # told FAIL, the summary written, and said
            with interrupts.deferred():
                _fail(study, trial, message, hint)
                summarize(spec, study, folder)
                on_event("failed", _record(study, trial.number))

        try:
            while True:
                with interrupts.deferred():
                    while (len(in_flight) < workers and counted + len(in_flight) < spec.trials
                           and not grid <= seen and repeats < MAX_REPEATS):
                        trial = study.ask(distributions)
                        key = _key(trial.params)
                        if key in seen:  # a point already run (or running): not run twice
                            trial.set_user_attr("repeat_of_params", True)
                            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                            repeats += 1
                            continue
                        repeats = 0
                        seen.add(key)
                        trial.set_user_attr("model", trial_model(spec, trial.params))
                        trial.set_user_attr("ray_cluster", cluster)
                        ref = remote.remote(spec, trial.params, str(artifacts.resolve()),
                                            str(data_dir.resolve()) if data_dir else None)
                        in_flight[ref] = trial
                        on_event("started", {"number": trial.number, "params": trial.params,
                                             "model": trial.user_attrs["model"]})
                if not in_flight:
                    break
                ready = _next_done(ray, list(in_flight))
                trial = in_flight.pop(ready)
                try:
                    outcome = ray.get(ready)
                except Exception as error:  # the worker died, or Ray lost the task: the trial failed, not the sweep
                    outcome = {"error": f"Ray: {type(error).__name__}: {_first_line(error)}",
                               "hint": "see the Ray worker logs; the trial is recorded as failed"}
                ran += 1
                counted += 1
                with interrupts.deferred():
                    for name in ("worker_host", "worker_pid", "ray_node_ip", "ray_node_id", "train_run", "epochs_done",
                                 "budget_stopped", "trained_now", "train_seconds", "artifact", "artifact_id",
                                 "export_cached", "export_seconds", "fp32_top1_host", "int8_top1_host", "seconds",
                                 "error_kind"):
                        if outcome.get(name) is not None:
                            trial.set_user_attr(name, outcome[name])
                    if "error" in outcome:
                        failed(trial, outcome["error"], outcome.get("hint", ""))
                        continue
                try:  # a deploy and a bench can take minutes: Ctrl-C stops them
                    prepare(Path(outcome["artifact"]))
                    measured = bench(system, Path(outcome["artifact"]), settings)
                    values = _objectives(measured.document, spec.bench.threads)
                except ToolchainError as error:
                    failed(trial, error.message, error.hint or "")
                    continue
                with interrupts.deferred():
                    trial.set_user_attr("bench_record", str(measured.path))
                    trial.set_user_attr("target", system.name)
                    where = measured.document.get("remote") or {}
                    if where.get("address"):  # measured over SSH: the machine the latency is from
                        trial.set_user_attr("target_address", where["address"])
                    study.tell(trial, list(values))
                    summarize(spec, study, folder)
                    on_event("finished", _record(study, trial.number))
        except BaseException:
            # Ctrl-C (or anything else) with trials in flight: cancel them, record them as interrupted
            for ref in in_flight:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            # every trial not yet told (in Ray, being measured, or just asked): this driver holds the lock
            # (a storage call that failed can leave that connection unusable: then a fresh one; failing
            # both, the next run marks them before it asks anything)
            with interrupts.deferred():
                for fresh in (False, True):
                    try:
                        recover_interrupted(open_study(spec, folder) if fresh else study)
                        break
                    except Exception:
                        continue
                with contextlib.suppress(Exception):
                    summarize(spec, study, folder)
            raise
        finally:
            stop_ray()
        if repeats >= MAX_REPEATS:
            on_event("stuck", {"repeats": repeats})
        with interrupts.deferred():
            return SweepOutcome(folder, summarize(spec, study, folder), ran)


def _next_done(ray: Any, refs: list[Any]) -> Any:
    """The first of ``refs`` to finish. The wait is polled: a Ctrl-C whose KeyboardInterrupt was lost (in a
    weakref callback, see toolchain.interrupts) still stops the sweep within `WAIT_POLL_S`."""
    while True:
        ready, _ = ray.wait(refs, num_returns=1, timeout=WAIT_POLL_S)
        if ready:
            return ready[0]
        interrupts.raise_if_seen()


def _fail(study: "optuna.Study", trial: Any, message: str, hint: str) -> None:
    optuna = _optuna()
    trial.set_user_attr("error", message)
    trial.set_user_attr("hint", hint)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)


def load_summary(artifacts: Path, name: str) -> dict[str, Any]:
    """A sweep's stored summary (sweep.json), checked to be one."""
    import json

    path = sweep_folder(artifacts, name) / SUMMARY_NAME
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"no sweep {name!r} in {artifacts}", "start it with `toolchain sweep run SPACE.toml`") from None
    except (OSError, ValueError) as error:
        raise ArtifactError(f"cannot read {path}: {_first_line(error)}",
                            "it is damaged: `toolchain sweep show SPACE.toml` writes it again from the study") from None
    if not isinstance(document, dict) or document.get("schema") != SUMMARY_SCHEMA:
        raise ArtifactError(f"{path} is not a sweep summary", "`toolchain sweep show SPACE.toml` writes it again")
    return document

