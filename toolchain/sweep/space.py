"""A sweep's search space and per-trial budget, read from TOML and checked before anything runs.

    [sweep]    name, family, dataset, trials, sampler ("nsga2" | "tpe"), seed
    [space]    depth (whole depths, e.g. [[1,1,1,1],[1,2,1,1]]) or stage_depths (choices per stage),
               width, unit_order ("papers" | "bnfirst"), method, format, activation_type, per_channel
    [budget]   epochs, minutes (training stops after the epoch that crosses it), train_limit, eval_limit,
               batch_size, lr, threads
    [export]   eval_count, max_drop, qat ("off" | "auto" | "on"), calibration
    [bench]    threads, warmup, runs

Every [space] entry is a list of choices (one value: fixed). This module imports neither optuna nor torch.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.errors import UsageError
from toolchain.models.registry import depth_name, families, resolve
from toolchain.pipeline.config import ACTIVATION_TYPES, FORMATS, METHODS, QuantSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SAMPLERS = ("nsga2", "tpe")
UNIT_ORDERS = ("papers", "bnfirst")
# the three objectives, in Optuna's order: INT8 top-1 (maximize), INT8 p50 latency, INT8 ONNX size
OBJECTIVES = ("top1_pct", "p50_ms", "int8_bytes")
DIRECTIONS = ("maximize", "minimize", "minimize")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SECTIONS = {"sweep", "space", "budget", "export", "bench"}
_KEYS = {
    "sweep": {"name", "family", "dataset", "trials", "sampler", "seed", "population"},
    "space": {"depth", "stage_depths", "width", "unit_order", "method", "format", "activation_type", "per_channel"},
    "budget": {"epochs", "minutes", "train_limit", "eval_limit", "batch_size", "lr", "threads"},
    "export": {"eval_count", "max_drop", "qat", "calibration"},
    "bench": {"threads", "warmup", "runs"},
}


@dataclass(frozen=True)
class Budget:
    """What one trial's training may spend: epochs, and wall minutes (checked after each epoch)."""

    epochs: int = 1
    minutes: float | None = None
    train_limit: int | None = None
    eval_limit: int | None = 1000
    batch_size: int = 32
    lr: float | None = 0.05
    threads: int = 1


@dataclass(frozen=True)
class TrialExport:
    """How each trial exports: eval images, the gate, QAT, calibration set."""

    eval_count: int = 500
    max_drop: float = 1.0
    qat: str = "off"
    calibration: str | None = None


@dataclass(frozen=True)
class TrialBench:
    """How each trial's INT8 model is timed (one thread count: the latency objective)."""

    threads: int = 1
    warmup: int = 20
    runs: int = 200


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file: the study's identity, the space, and how every trial runs."""

    name: str
    family: str
    dataset: str
    trials: int
    sampler: str
    seed: int
    population: int
    choices: dict[str, list[Any]]  # parameter -> its choices (Optuna categorical, in file order)
    budget: Budget = field(default_factory=Budget)
    export: TrialExport = field(default_factory=TrialExport)
    bench: TrialBench = field(default_factory=TrialBench)
    source: Path | None = None

    @property
    def size(self) -> int:
        """How many distinct trials the space holds."""
        return math.prod(len(values) for values in self.choices.values())

    def grid(self) -> list[dict[str, Any]]:
        """Every point of the space (for small spaces: what 'exhausted' means)."""
        keys = list(self.choices)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.choices[k] for k in keys))]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "dataset": self.dataset, "trials": self.trials,
                "sampler": self.sampler, "seed": self.seed, "population": self.population,
                "choices": self.choices, "budget": vars(self.budget), "export": vars(self.export),
                "bench": vars(self.bench), "source": str(self.source) if self.source else None}


def trial_model(spec: SweepSpec, params: dict[str, Any]) -> str:
    """The registry name a trial's parameters build (a paper depth keeps its paper name)."""
    depth = tuple(int(part) for part in str(_param(spec, params, "depth")).split("."))
    order = _param(spec, params, "unit_order")
    return resolve(depth_name(spec.family, depth, float(_param(spec, params, "width")), order == "bnfirst")).name


def trial_quant(spec: SweepSpec, params: dict[str, Any]) -> QuantSettings:
    """The quantization settings of a trial's parameters, with the sweep's gate."""
    return QuantSettings(method=_param(spec, params, "method"), format=_param(spec, params, "format"),
                         activation_type=_param(spec, params, "activation_type"),
                         per_channel=bool(_param(spec, params, "per_channel")), max_drop=spec.export.max_drop)


def _param(spec: SweepSpec, params: dict[str, Any], key: str) -> Any:
    return params[key] if key in params else spec.choices[key][0]


def load_space(path: Path) -> SweepSpec:
    """Read and check a sweep file; every mistake is one usage error naming the file and the key."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"sweep file {path} does not exist", "pass a search space in TOML (see docs/sweep.md)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read sweep file {path}: {exc.__class__.__name__}: {exc}",
                         "check the path and its permissions") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}", "fix the line it names (see docs/sweep.md)") from None
    return parse_space(data, path)


def parse_space(data: dict[str, Any], path: Path | None = None) -> SweepSpec:
    """Check a sweep file's tables (as `tomllib` read them) into a `SweepSpec`."""
    where = str(path) if path else "sweep file"

    def fail(message: str, hint: str) -> UsageError:
        return UsageError(f"{where}: {message}", hint)

    unknown = set(data) - _SECTIONS
    if unknown:
        raise fail(f"unknown table [{sorted(unknown)[0]}]", f"tables: {', '.join(sorted(_SECTIONS))}")
    for section in _SECTIONS:
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise fail(f"[{section}] is not a table", f"write it as [{section}] with keys below it")
        extra = set(table) - _KEYS[section]
        if extra:
            raise fail(f"unknown key {section}.{sorted(extra)[0]}", f"[{section}] takes: {', '.join(sorted(_KEYS[section]))}")
    sweep, space = data.get("sweep", {}), data.get("space", {})

    def typed(table: dict[str, Any], section: str, key: str, kind: type | tuple[type, ...], default: Any,
              minimum: float | None = None) -> Any:
        value = table.get(key, default)
        if value is None:
            return None
        if not isinstance(value, kind) or isinstance(value, bool) or (minimum is not None and value < minimum):
            name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            bound = f" >= {minimum:g}" if minimum is not None else ""
            raise fail(f"{section}.{key} must be a {name}{bound}, got {value!r}", "see docs/sweep.md for every key")
        return value

    name = typed(sweep, "sweep", "name", str, path.stem if path else "sweep")
    if not _NAME_RE.match(name):
        raise fail(f"sweep.name {name!r} is not a folder-safe name", "use lower-case letters, digits, '.', '_' or '-'")
    family = typed(sweep, "sweep", "family", str, "hps")
    known = families()
    if family not in known or known[family].free_depth_stages is None:
        free = sorted(n for n, f in known.items() if f.free_depth_stages is not None)
        raise fail(f"sweep.family {family!r} cannot be built at any depth", f"use one of: {', '.join(free)}")
    stages = known[family].free_depth_stages
    sampler = typed(sweep, "sweep", "sampler", str, "nsga2")
    if sampler not in SAMPLERS:
        raise fail(f"unknown sweep.sampler {sampler!r}", f"use one of: {', '.join(SAMPLERS)}")

    choices: dict[str, list[Any]] = {}
    if ("depth" in space) == ("stage_depths" in space):
        raise fail("give exactly one of space.depth (whole depths) and space.stage_depths (choices per stage)",
                   f"e.g. depth = [[1, 1, 1, 1], [1, 2, 2, 1]] ({stages} stages)")
    if "depth" in space:
        depths = space["depth"]
        if not isinstance(depths, list) or not depths or not all(isinstance(d, list) for d in depths):
            raise fail("space.depth must be a list of depths, each a list of blocks per stage",
                       f"e.g. depth = [[1, 1, 1, 1], [1, 2, 2, 1]] ({stages} stages)")
    else:
        per_stage = space["stage_depths"]
        if not isinstance(per_stage, list) or len(per_stage) != stages or not all(
                isinstance(s, list) and s for s in per_stage):
            raise fail(f"space.stage_depths must list the block choices of each of the {stages} stages",
                       "e.g. stage_depths = [[1], [1, 2], [1, 2, 4], [1]]")
        depths = [list(combination) for combination in itertools.product(*per_stage)]
    texts = []
    for depth in depths:
        if len(depth) != stages or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in depth):
            raise fail(f"depth {depth!r} is not {stages} positive block counts", f"e.g. {[1] * stages}")
        texts.append(".".join(str(b) for b in depth))
    choices["depth"] = _unique(texts, "depth", fail)
    widths = _choice_list(space, "width", [0.5], fail)
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in widths):
        raise fail(f"space.width must be positive numbers, got {widths!r}", "e.g. width = [0.25, 0.5]")
    choices["width"] = _unique([float(w) for w in widths], "width", fail)
    for key, allowed, default in (("unit_order", UNIT_ORDERS, "papers"),
                                  ("method", tuple(m for m in METHODS if m != "auto"), "minmax"),
                                  ("format", FORMATS, "qoperator"), ("activation_type", ACTIVATION_TYPES, "uint8")):
        values = _choice_list(space, key, [default], fail)
        bad = [v for v in values if v not in allowed]
        if bad:
            raise fail(f"space.{key} has {bad[0]!r}", f"choices: {', '.join(allowed)}")
        choices[key] = _unique(values, key, fail)
    per_channel = _choice_list(space, "per_channel", [True], fail)
    if not all(isinstance(v, bool) for v in per_channel):
        raise fail("space.per_channel must be true and/or false", "e.g. per_channel = [true, false]")
    choices["per_channel"] = _unique(per_channel, "per_channel", fail)
    if "bnfirst" in choices["unit_order"] and not known[family].bn_first_variant:
        raise fail(f"{family} has no bnfirst unit order", "use unit_order = [\"papers\"]")
    for depth in choices["depth"]:  # every model of the space must build: fail now, not in trial 7
        for width in choices["width"]:
            try:
                resolve(depth_name(family, [int(b) for b in depth.split(".")], width))
            except UsageError as error:
                raise fail(error.message, error.hint or "") from None

    budget_table, export_table, bench_table = data.get("budget", {}), data.get("export", {}), data.get("bench", {})
    budget = Budget(epochs=typed(budget_table, "budget", "epochs", int, 1, 1),
                    minutes=typed(budget_table, "budget", "minutes", (int, float), None, 1e-6),
                    train_limit=typed(budget_table, "budget", "train_limit", int, None, 1),
                    eval_limit=typed(budget_table, "budget", "eval_limit", int, 1000, 1),
                    batch_size=typed(budget_table, "budget", "batch_size", int, 32, 1),
                    lr=typed(budget_table, "budget", "lr", (int, float), 0.05, 1e-9),
                    threads=typed(budget_table, "budget", "threads", int, 1, 1))
    export = TrialExport(eval_count=typed(export_table, "export", "eval_count", int, 500, 1),
                         max_drop=float(typed(export_table, "export", "max_drop", (int, float), 1.0, 0)),
                         qat=typed(export_table, "export", "qat", str, "off"),
                         calibration=typed(export_table, "export", "calibration", str, None))
    if export.qat not in ("off", "auto", "on"):
        raise fail(f"unknown export.qat {export.qat!r}", "use off, auto or on")
    bench = TrialBench(threads=typed(bench_table, "bench", "threads", int, 1, 1),
                       warmup=typed(bench_table, "bench", "warmup", int, 20, 0),
                       runs=typed(bench_table, "bench", "runs", int, 200, 1))
    return SweepSpec(name=name, family=family, dataset=typed(sweep, "sweep", "dataset", str, "fashion-mnist"),
                     trials=typed(sweep, "sweep", "trials", int, 20, 1), sampler=sampler,
                     seed=typed(sweep, "sweep", "seed", int, 0, 0), population=typed(sweep, "sweep", "population", int, 8, 2),
                     choices=choices, budget=budget, export=export, bench=bench, source=path)


def _choice_list(space: dict[str, Any], key: str, default: list[Any], fail: Any) -> list[Any]:
    values = space.get(key, default)
    values = values if isinstance(values, list) else [values]
    if not values:
        raise fail(f"space.{key} is empty", f"give at least one choice for {key}")
    return values


def _unique(values: list[Any], key: str, fail: Any) -> list[Any]:
    if len(set(values)) != len(values):
        raise fail(f"space.{key} lists a choice twice", "list each choice once")
    return values
