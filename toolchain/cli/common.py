"""What the commands that reach a target or run the agent show alike: artifact choice, preflight table,
upload and agent progress, bench tables."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from toolchain.cli.output import info, progress, table, warn
from toolchain.errors import UsageError

if TYPE_CHECKING:
    from toolchain.bench.results import BenchRun, ProgressCallback
    from toolchain.remote.preflight import Check
    from toolchain.remote.target import TargetProfile


def artifact_folder(artifact: Path | None, model: str | None, artifacts: Path, example: str,
                    target: "TargetProfile | None" = None) -> Path:
    """--artifact FOLDER, or the artifact of --model NAME in the store (exactly one of the two): the one
    `toolchain optimize` chose for `target` where it chose one, else the model's newest export."""
    from toolchain.artifacts import ArtifactStore

    if (artifact is None) == (model is None):
        raise UsageError("pass exactly one of --artifact FOLDER and --model NAME (its newest artifact)",
                         f"e.g. {example} (make one with `toolchain export`)")
    if artifact is not None:
        return artifact
    store = ArtifactStore(artifacts)
    if target is None:
        return store.latest(model or "")
    from toolchain.optimize.targets import target_key

    key = target_key(target)
    chosen = store.chosen(model or "", key)
    if chosen is not None:
        info(f"{model}: the artifact `toolchain optimize` chose for {target.name} ({target.address}): {chosen}")
        return chosen
    return store.latest(model or "")


def title(profile: "TargetProfile", what: str) -> str:
    emulated = " -- EMULATED (qemu-user): timings are not the Bluebox's" if profile.emulated else ""
    return f"{what}: target {profile.name} ({profile.address}){emulated}"


def show_checks(profile: "TargetProfile", checks: list["Check"]) -> None:
    """The preflight table (one row per fact, with its status)."""
    table(title(profile, "preflight"), ["check", "target", "status", "note"],
          [(check.name, check.value, check.status, check.note) for check in checks])


class UploadBar:
    """A rich progress bar fed by upload callbacks (one task per file)."""

    def __init__(self) -> None:
        self._bar = progress()
        self._tasks: dict[str, object] = {}

    def __enter__(self) -> "UploadBar":
        self._bar.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.__exit__(*exc_info)

    def __call__(self, name: str, done: int, total: int) -> None:
        if name not in self._tasks:
            self._tasks[name] = self._bar.add_task(f"upload {name}", total=total, status="")
        self._bar.update(self._tasks[name], completed=done)  # type: ignore[arg-type]


@contextmanager
def agent_progress() -> Iterator["ProgressCallback"]:
    """A progress bar fed by the agent's PROGRESS events; yields the callback."""
    with progress() as bar:
        task = bar.add_task("agent", total=None, status="")

        def on_progress(event: dict) -> None:
            bar.update(task, description=f"{event.get('variant', '')} {event.get('threads', '')} thread(s)",
                       completed=event.get("done"), total=event.get("total"), status=event.get("phase", ""))

        yield on_progress


def show_bench(run: "BenchRun", with_artifact: bool = True) -> None:
    """A bench result as a table (labeled EMULATED where it is), its notes, and where it was stored."""
    from toolchain.report import bench_notes, bench_table

    summary = bench_table(run.document, run.agreements)
    measured = run.document["artifact"]
    heading = f"{measured['model']} {measured['artifact_id']} {summary.title}" if with_artifact else summary.title
    table(heading, summary.columns, summary.rows, right_align=summary.right_align)
    for line in bench_notes(run.document):
        info(line)


def warn_disagreement(run: "BenchRun") -> None:
    """A warning per measurement whose top-1 answers differ from the host's more than the threshold allows."""
    from toolchain.bench.results import AGREEMENT_THRESHOLD_PCT

    for item in run.agreements:
        if item.agreement_pct < AGREEMENT_THRESHOLD_PCT:
            warn(f"{item.variant} threads {item.threads}: the target agrees with the host on only "
                 f"{item.agreement_pct:.2f}% of top-1 answers (threshold {AGREEMENT_THRESHOLD_PCT:g}%)")
