"""`toolchain fleet deploy|bench -i INVENTORY`: one artifact on every host of an Ansible-style inventory.

At most --forks hosts at once, a live line per host, a table of per-host results; a host that fails does not
stop the others, and the exit code is the number of hosts that failed. `--retry-failed` reruns the hosts the
previous run of the same action recorded as failed or interrupted (<artifacts>/fleet/last-<action>.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from toolchain.cli.common import artifact_folder
from toolchain.cli.options import DEFAULT_ARTIFACTS, ArtifactsOption, JsonOption, OptionalModelOption
from toolchain.cli.output import emit_json, info, progress, table, warn
from toolchain.errors import FleetFailedError, FleetInterruptedError

if TYPE_CHECKING:
    from toolchain.fleet.inventory import InventoryHost
    from toolchain.fleet.run import FleetOptions, FleetRun, HostResult

FLEET_EXAMPLE = "toolchain fleet bench -i inventory.ini --model hps-06-0.5x"

InventoryOption = Annotated[Path, typer.Option(
    "--inventory", "-i", help="Ansible inventory file (INI or YAML): groups, hosts, ansible_host/ansible_port/"
    "ansible_user, toolchain_target (the profile).")]
LimitOption = Annotated[Optional[str], typer.Option(
    "--limit", "-l", help="Hosts or groups to run on, as Ansible's --limit: 'web,db', 'boards:!slow', 'b*'.")]
ForksOption = Annotated[int, typer.Option("--forks", "-f", help="Hosts at once, at most.", min=1, max=256)]
RetryOption = Annotated[bool, typer.Option(
    "--retry-failed", help="Rerun only the hosts the previous run of this command recorded as failed or "
    "interrupted.")]
ArtifactOption = Annotated[Optional[Path], typer.Option(
    "--artifact", "-a", help="Artifact folder (artifacts/<model>/<id>/); default: --model's newest.")]
FleetTargetOption = Annotated[Optional[str], typer.Option(
    "--target", "-t", help="Profile for hosts without toolchain_target (default: linux).", envvar="TOOLCHAIN_TARGET")]
FleetIdentityOption = Annotated[Optional[Path], typer.Option(
    "--identity-file", help="Private key for hosts without ansible_ssh_private_key_file.")]
FleetKnownHostsOption = Annotated[Optional[Path], typer.Option(
    "--known-hosts", help="known_hosts file for hosts without toolchain_known_hosts (strict checking).")]
FleetJumpOption = Annotated[Optional[str], typer.Option(
    "--jump", "-J", help="Jump host(s) for hosts without toolchain_jump or a ProxyJump in ansible_ssh_common_args.")]
FleetWorkdirOption = Annotated[Optional[str], typer.Option(
    "--workdir", help="Work folder on hosts without toolchain_workdir.")]
FleetPythonOption = Annotated[Optional[str], typer.Option(
    "--python", help="Python on hosts without ansible_python_interpreter.")]
AcceptOption = Annotated[bool, typer.Option(
    "--accept-new-host-key", help="Trust and record a host key known_hosts has none for; a changed key is refused.")]
BreakLockOption = Annotated[bool, typer.Option(
    "--break-lock", help="Stop the run that holds a target's lock and take it.")]
WheelsOption = Annotated[Optional[Path], typer.Option(
    "--wheels", help="Folder of .whl files to provision from, without contacting the package index.")]

fleet_app = typer.Typer(no_args_is_help=True, help="Deploy or bench on every host of an Ansible-style inventory.")


class HostBoard:
    """The live view: one line per host (its latest step, and a bar for uploads and the agent's runs)."""

    def __init__(self, hosts: list["InventoryHost"]) -> None:
        self._bar = progress()
        self._tasks = {host.name: self._bar.add_task(host.name, total=None, status="waiting") for host in hosts}

    def __enter__(self) -> "HostBoard":
        self._bar.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.__exit__(*exc_info)

    def __call__(self, host: str, kind: str, data: Any) -> None:
        task = self._tasks[host]
        if kind == "message":
            self._bar.update(task, status=str(data))
        elif kind == "progress":
            phase = data.get("phase", "")
            detail = f"{data.get('variant', '')} {data.get('threads', '')}t {phase}" if "variant" in data else phase
            self._bar.update(task, completed=data.get("done"), total=data.get("total"), status=detail.strip())
        elif kind == "done":
            result: "HostResult" = data
            self._bar.update(task, status=result.status)
            if result.status == "ok":
                info(f"{host}: ok in {result.seconds:.1f} s" + (f" via {result.via}" if result.via else ""))
            else:
                warn(f"{host}: {result.status} after {result.seconds:.1f} s: {result.error}")


def _hosts(inventory: Path, limit: str | None, retry: bool, artifacts: Path, action: str) \
        -> tuple[list["InventoryHost"], dict | None]:
    from toolchain.fleet.inventory import read_inventory, select_hosts
    from toolchain.fleet.run import failed_hosts, read_record

    hosts = select_hosts(read_inventory(inventory), limit)
    if not retry:
        return hosts, None
    record = read_record(artifacts, action)
    wanted = failed_hosts(record)
    missing = sorted(set(wanted) - {host.name for host in hosts})
    if missing:
        warn(f"not retried (not in {inventory} or outside --limit): {', '.join(missing)}")
    return [host for host in hosts if host.name in wanted], record


def _show(run: "FleetRun", action: str) -> None:
    columns = ["host", "address", "status", "s", "sent bytes"]
    if action == "bench":
        columns += ["fp32 p50 ms", "int8 p50 ms"]
    rows = []
    for result in run.results:
        row: list[Any] = [result.host, result.address + (f" via {result.via}" if result.via else ""), result.status, f"{result.seconds:.1f}",
                          f"{result.bytes_sent:,}" if result.deployed else "-"]
        if action == "bench":
            for variant in ("fp32", "int8"):
                best = [item["p50_ms"] for item in result.rows if item["variant"] == variant]
                row.append(f"{min(best):.3f}" + (" (emulated)" if result.emulated else "") if best else "-")
        rows.append(row + [result.error or ""])
    table(f"fleet {action}: {run.model} {run.artifact_id}, {len(run.results)} host(s), --forks {run.forks}",
          [*columns, "error"], rows, right_align=["s", "sent bytes", "fp32 p50 ms", "int8 p50 ms"])
    hosts_s = sum(item.seconds for item in run.results)
    info(f"wall {run.wall_s:.1f} s for {hosts_s:.1f} s of host time"
         + (f" (x{hosts_s / run.wall_s:.2f} from running hosts in parallel)" if run.wall_s > 0 else ""))


def _fleet(action: str, inventory: Path, limit: str | None, forks: int, retry: bool, artifact: Path | None,
           model: str | None, artifacts: Path, options: "FleetOptions", wheels: Path | None,
           bench_overrides: dict[str, Any] | None, json_output: bool) -> None:
    from toolchain.artifacts import load_artifact
    from toolchain.fleet.run import run_fleet, save_record
    from toolchain.remote.provision import WheelIndex

    hosts, previous = _hosts(inventory, limit, retry, artifacts, action)
    if previous is not None and artifact is None and model is None:
        artifact = Path(previous["artifact"]) if previous.get("artifact") else None
    if retry and not hosts:
        info(f"no failed host to retry in the last `toolchain fleet {action}`")
        if json_output:
            emit_json({"action": action, "hosts": [], "failed": []})
        return
    folder = artifact_folder(artifact, model, artifacts, FLEET_EXAMPLE)
    loaded = load_artifact(folder)  # checked once, for every host
    info(f"fleet {action} of {loaded.model} {loaded.artifact_id} on {len(hosts)} host(s), {min(forks, len(hosts))} "
         "at once")
    stored: list[Path] = []
    ended: list["FleetRun"] = []

    def finished(done: "FleetRun") -> None:
        ended.append(done)
        stored.append(save_record(artifacts, done, previous))

    try:
        with HostBoard(hosts) as board:
            run = run_fleet(action, hosts, loaded, forks=forks, bench_overrides=bench_overrides, options=options,
                            index=WheelIndex(wheel_dir=wheels) if wheels else None, inventory=inventory,
                            on_event=board, on_finish=finished)
    except KeyboardInterrupt:
        if not ended:
            raise
        raise _interrupted(ended[0], inventory, stored[0] if stored else None) from None
    if json_output:
        emit_json({**run.to_dict(), "record": str(stored[0])})
    else:
        _show(run, action)
        info(f"stored {stored[0]}")
    failed = run.failed
    if failed:
        raise FleetFailedError(f"{len(failed)} of {len(run.results)} host(s) failed: "
                               + ", ".join(item.host for item in failed),
                               f"each host's error is above; rerun just those: toolchain fleet {action} -i {inventory} "
                               "--retry-failed", failed=len(failed))


def _interrupted(run: "FleetRun", inventory: Path, record: Path | None) -> FleetInterruptedError:
    """Ctrl-C: which hosts were stopped mid-way, which never started, which had finished; how to finish."""
    from toolchain.fleet.run import INTERRUPTED, OK

    def names(items: list["HostResult"]) -> str:
        return ", ".join(item.host for item in items) or "none"

    stopped = [item for item in run.results if item.status == INTERRUPTED and item.started]
    waiting = [item for item in run.results if item.status == INTERRUPTED and not item.started]
    done = [item for item in run.results if item.status == OK]
    left = [item for item in run.results if item.status != OK]
    return FleetInterruptedError(
        f"interrupted: fleet {run.action} of {run.model} stopped on {names(stopped)}; not started: {names(waiting)}; "
        f"finished: {names(done)}" + (f"; failed: {names([i for i in left if i not in stopped + waiting])}"
                                      if len(left) > len(stopped) + len(waiting) else ""),
        f"nothing half-written was kept there or here; finish the {len(left)} host(s) left: toolchain fleet "
        f"{run.action} -i {inventory} --retry-failed" + (f" (the record: {record})" if record else ""))


def _options(target: str | None, identity_file: Path | None, known_hosts: Path | None, jump: str | None,
             workdir: str | None, python: str | None, accept: bool, break_lock: bool) -> "FleetOptions":
    from toolchain.fleet.run import FleetOptions

    return FleetOptions(target=target, identity_file=identity_file, known_hosts=known_hosts, jump=jump,
                        workdir=workdir, python=python, accept_new_host_key=accept, break_lock=break_lock)


@fleet_app.command("deploy")
def fleet_deploy(
    inventory: InventoryOption,
    limit: LimitOption = None,
    forks: ForksOption = 5,
    retry_failed: RetryOption = False,
    artifact: ArtifactOption = None,
    model: OptionalModelOption = None,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    target: FleetTargetOption = None,
    identity_file: FleetIdentityOption = None,
    known_hosts: FleetKnownHostsOption = None,
    jump: FleetJumpOption = None,
    workdir: FleetWorkdirOption = None,
    python: FleetPythonOption = None,
    wheels: WheelsOption = None,
    accept_new_host_key: AcceptOption = False,
    break_lock: BreakLockOption = False,
    json_output: JsonOption = False,
) -> None:
    """Deploy an artifact to every selected host (preflight, provisioning, verified upload), --forks at once."""
    _fleet("deploy", inventory, limit, forks, retry_failed, artifact, model, artifacts,
           _options(target, identity_file, known_hosts, jump, workdir, python, accept_new_host_key, break_lock),
           wheels, None, json_output)


@fleet_app.command("bench")
def fleet_bench(
    inventory: InventoryOption,
    limit: LimitOption = None,
    forks: ForksOption = 5,
    retry_failed: RetryOption = False,
    artifact: ArtifactOption = None,
    model: OptionalModelOption = None,
    artifacts: ArtifactsOption = DEFAULT_ARTIFACTS,
    target: FleetTargetOption = None,
    identity_file: FleetIdentityOption = None,
    known_hosts: FleetKnownHostsOption = None,
    jump: FleetJumpOption = None,
    workdir: FleetWorkdirOption = None,
    python: FleetPythonOption = None,
    wheels: WheelsOption = None,
    accept_new_host_key: AcceptOption = False,
    break_lock: BreakLockOption = False,
    threads: Annotated[Optional[str], typer.Option(
        "--threads", help="Intra-op thread counts, e.g. 1,2 (default: each host's profile).")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", help="Images per run (default 1).", min=1)] = None,
    warmup: Annotated[Optional[int], typer.Option("--warmup", help="Untimed runs first.", min=0)] = None,
    runs: Annotated[Optional[int], typer.Option("--runs", help="Timed runs, at least.", min=1)] = None,
    min_time: Annotated[Optional[float], typer.Option(
        "--min-time", help="Keep timing until this many seconds of runs.", min=0)] = None,
    json_output: JsonOption = False,
) -> None:
    """Bench an artifact on every selected host (deployed first where it is missing), --forks at once."""
    from toolchain.bench.settings import parse_threads

    overrides = dict(threads=parse_threads(threads) if threads else None, batch=batch, warmup=warmup, runs=runs,
                     min_time_s=min_time)
    _fleet("bench", inventory, limit, forks, retry_failed, artifact, model, artifacts,
           _options(target, identity_file, known_hosts, jump, workdir, python, accept_new_host_key, break_lock),
           wheels, overrides, json_output)


def register(app: typer.Typer) -> None:
    """Add the `fleet` group to the toolchain app."""
    app.add_typer(fleet_app, name="fleet")
