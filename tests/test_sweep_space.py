"""Sweeps without Ray: depth-per-stage model names, the sweep file, the Pareto front, the study's resume rules
(real Optuna on SQLite), and the CLI's one-line errors."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from toolchain.errors import UnknownModelError, UsageError
from toolchain.models import resolve
from toolchain.models.squeezenext import SqueezeNextBlock
from toolchain.sweep.pareto import dominates, pareto_front
from toolchain.sweep.space import DIRECTIONS, load_space, parse_space, trial_model, trial_quant

SPACE = {"sweep": {"name": "unit", "family": "hps", "trials": 4},
         "space": {"depth": [[1, 1, 1, 1], [1, 2, 1, 1]], "width": [0.25, 0.5]}}


# --- model names by depth per stage ------------------------------------------------------------

def test_a_paper_depth_by_stages_resolves_to_the_papers_name():
    assert resolve("hps-d1.1.1.1-0.5x").name == "hps-06-0.5x"
    assert resolve("shallow-d1.1.4.1-1x-bnfirst").name == "shallow-09-1x-bnfirst"


@pytest.mark.parametrize("depth", [(1, 2, 1, 1), (2, 1, 3, 1), (1, 1, 1, 5)])
def test_any_depth_per_stage_builds_that_many_blocks_per_stage(depth):
    name = f"hps-d{'.'.join(map(str, depth))}-0.25x"
    spec = resolve(name)
    assert (spec.name, spec.depth, spec.layers, spec.version) == (name, depth, sum(depth) + 2, None)
    model = spec.build(num_classes=10, in_channels=1)
    assert [sum(isinstance(m, SqueezeNextBlock) for m in stage.modules()) for stage in model.stages] == list(depth)


def test_the_bnfirst_unit_order_applies_to_a_depth_of_our_own():
    papers, bn_first = resolve("hps-d1.2.1.1-0.25x"), resolve("hps-d1.2.1.1-0.25x-bnfirst")
    assert bn_first.bn_first and not papers.bn_first and bn_first.name.endswith("-bnfirst")
    count = lambda spec: sum(p.numel() for p in spec.build().parameters())  # noqa: E731
    assert count(papers) == count(bn_first)


@pytest.mark.parametrize("name, fragment", [("hps-d1.1.1-1x", "4 stages"), ("hps-d0.1.1.1-1x", "1 to 32"),
                                            ("hps-d1.1.1.1-9x", "out of range"),
                                            ("sqnxt-d1.1.1.1-1x-bnfirst", "no -bnfirst")])
def test_impossible_depth_names_fail_with_a_hint(name, fragment):
    with pytest.raises(UnknownModelError) as raised:
        resolve(name)
    assert fragment in raised.value.message and raised.value.hint


# --- the sweep file ----------------------------------------------------------------------------

def test_the_space_maps_each_point_to_a_registry_model_and_quantization_settings():
    spec = parse_space({**SPACE, "space": {**SPACE["space"], "unit_order": ["papers", "bnfirst"],
                                           "format": ["qoperator", "qdq"]}})
    assert spec.size == 2 * 2 * 2 * 2 and len(spec.grid()) == spec.size
    models = {trial_model(spec, point) for point in spec.grid()}
    assert models == {"hps-06-0.25x", "hps-06-0.5x", "hps-d1.2.1.1-0.25x", "hps-d1.2.1.1-0.5x",
                      "hps-06-0.25x-bnfirst", "hps-06-0.5x-bnfirst", "hps-d1.2.1.1-0.25x-bnfirst",
                      "hps-d1.2.1.1-0.5x-bnfirst"}
    quant = trial_quant(spec, {**spec.grid()[-1]})
    assert (quant.format, quant.method, quant.max_drop) == ("qdq", "minmax", 1.0)


def test_stage_depths_give_every_combination_of_the_choices_per_stage():
    spec = parse_space({"space": {"stage_depths": [[1], [1, 2], [1, 4], [1]]}})
    assert spec.choices["depth"] == ["1.1.1.1", "1.1.4.1", "1.2.1.1", "1.2.4.1"]


@pytest.mark.parametrize("change, fragment", [
    ({"space": {"width": [0.5]}}, "exactly one of space.depth"),
    ({"space": {"depth": [[1, 1, 1, 1]], "stage_depths": [[1], [1], [1], [1]]}}, "exactly one of"),
    ({"space": {"depth": [[1, 1, 1]]}}, "4 positive block counts"),
    ({"space": {"depth": [[1, 1, 1, 1]], "width": [0.5, 0.5]}}, "twice"),
    ({"space": {"depth": [[1, 1, 1, 1]], "format": ["onnx"]}}, "space.format"),
    ({"space": {"depth": [[1, 1, 1, 1]], "method": ["auto"]}}, "space.method"),
    ({"space": {"depth": [[1, 1, 1, 1]]}, "sweep": {"sampler": "grid"}}, "sweep.sampler"),
    ({"space": {"depth": [[1, 1, 1, 1]]}, "sweep": {"family": "squeezenet-v1.1"}}, "any depth"),
    ({"space": {"depth": [[1, 1, 1, 1]]}, "sweep": {"name": "../up"}}, "folder-safe"),
    ({"space": {"depth": [[1, 1, 1, 1]]}, "budget": {"epochs": 0}}, "budget.epochs"),
    ({"space": {"depth": [[1, 1, 1, 1]]}, "budget": {"epochs": True}}, "budget.epochs"),
    ({"space": {"depth": [[1, 1, 1, 1]]}, "budget": {"hours": 1}}, "unknown key budget.hours"),
    ({"space": {"depth": [[1, 1, 1, 1]]}, "search": {}}, "unknown table"),
])
def test_a_wrong_sweep_file_is_one_usage_error_naming_the_key(change, fragment, tmp_path):
    with pytest.raises(UsageError) as raised:
        parse_space(change, tmp_path / "space.toml")
    assert fragment in raised.value.message and str(tmp_path / "space.toml") in raised.value.message
    assert raised.value.hint


def test_load_space_names_the_file_for_missing_and_broken_toml(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_space(tmp_path / "none.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[space\ndepth = 1\n")
    with pytest.raises(UsageError, match="broken.toml is not valid TOML"):
        load_space(broken)


# --- the Pareto front --------------------------------------------------------------------------

def test_pareto_front_keeps_exactly_the_points_nothing_dominates():
    rng = random.Random(3)
    values = {n: [rng.choice([10.0, 20.0, 30.0]), rng.choice([0.1, 0.2, 0.3]), rng.choice([1.0, 2.0])]
              for n in range(40)}
    front = pareto_front(values, DIRECTIONS)
    for n, mine in values.items():
        beaten = any(all((o[0] >= mine[0], o[1] <= mine[1], o[2] <= mine[2])) and o != mine for o in values.values())
        assert (n in front) == (not beaten)
    assert dominates([30.0, 0.1, 1.0], [20.0, 0.1, 1.0], DIRECTIONS)
    assert not dominates([30.0, 0.2, 1.0], [20.0, 0.1, 1.0], DIRECTIONS)
    assert pareto_front({1: [5.0, 1.0, 1.0], 2: [5.0, 1.0, 1.0]}, DIRECTIONS) == [1, 2]  # equal points both stay


# --- the study: real Optuna on SQLite ----------------------------------------------------------

def test_a_trial_left_running_is_failed_as_interrupted_and_its_point_queued_again(tmp_path):
    import optuna

    from toolchain.sweep.study import INTERRUPTED, _distributions, open_study, recover_interrupted

    spec = parse_space(SPACE)
    study = open_study(spec, tmp_path)
    done = study.ask(_distributions(spec))
    study.tell(done, [50.0, 0.2, 1000.0])
    left = study.ask(_distributions(spec))  # sent to Ray (it has its model), then the driver was killed
    left.set_user_attr("model", trial_model(spec, left.params))
    asked = study.ask(_distributions(spec))  # asked, never sent: nothing of it ran

    again = open_study(spec, tmp_path)  # what a rerun sees
    assert recover_interrupted(again) == [left.number, asked.number]
    trials = again.get_trials()
    assert trials[left.number].state == optuna.trial.TrialState.FAIL
    assert trials[left.number].user_attrs["error"] == INTERRUPTED
    assert trials[done.number].state == optuna.trial.TrialState.COMPLETE  # never touched
    assert trials[asked.number].state == optuna.trial.TrialState.FAIL and not trials[asked.number].user_attrs["requeued"]
    queued = again.ask(_distributions(spec))  # only the started one comes back
    assert queued.params == left.params and queued.user_attrs["retry_of"] == left.number
    assert len(again.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 0
    assert recover_interrupted(open_study(spec, tmp_path)) == [queued.number]


def test_a_sweep_continues_only_with_the_same_space_and_one_driver_at_a_time(tmp_path):
    from toolchain.sweep.study import _check_same_space, _sweep_lock

    spec = parse_space(SPACE)
    _check_same_space(spec, tmp_path)
    _check_same_space(parse_space({**SPACE, "sweep": {**SPACE["sweep"], "trials": 9}}), tmp_path)  # more trials: fine
    with pytest.raises(UsageError, match="another choices"):
        _check_same_space(parse_space({**SPACE, "space": {**SPACE["space"], "width": [0.25]}}), tmp_path)
    with _sweep_lock(tmp_path):
        with pytest.raises(UsageError, match="running already"):
            with _sweep_lock(tmp_path):
                pass


def test_the_grid_covers_the_space_once():
    spec = parse_space(SPACE)
    points = spec.grid()
    assert len({tuple(sorted(p.items())) for p in points}) == len(points) == 4
    assert {(p["depth"], p["width"]) for p in points} == set(itertools.product(["1.1.1.1", "1.2.1.1"], [0.25, 0.5]))


# --- the command line --------------------------------------------------------------------------

def _cli(capsys, *args: str | Path) -> tuple[int, str]:
    from toolchain.cli.main import run

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run([str(a) for a in args])
    return int(exited.value.code or 0), capsys.readouterr().err


def test_sweep_cli_errors_are_one_error_line_and_one_hint(capsys, tmp_path):
    code, err = _cli(capsys, "sweep", "run", tmp_path / "missing.toml", "--artifacts", tmp_path)
    assert code == 2 and err.startswith("error: ") and "\nhint: " in err and "Traceback" not in err
    space = tmp_path / "s.toml"
    space.write_text('[sweep]\nname = "never-ran"\n[space]\ndepth = [[1, 1, 1, 1]]\n')
    code, err = _cli(capsys, "sweep", "show", space, "--artifacts", tmp_path)
    assert code == 1 and "no sweep study in" in err and "hint: start it with" in err
    assert not (tmp_path / "sweeps" / "never-ran" / "study.db").exists()


# --- the per-trial budget (real training on Fashion-MNIST) -------------------------------------

def test_the_time_budget_stops_training_after_the_epoch_that_crosses_it_and_a_rerun_reuses_it(tmp_path):
    from toolchain.sweep.trial import BUDGET_NAME, _train

    spec = parse_space({**SPACE, "budget": {"epochs": 3, "minutes": 0.0001, "train_limit": 300, "eval_limit": 50,
                                            "batch_size": 32}})
    first = _train(spec, "hps-06-0.25x", tmp_path, None)
    assert (first["epochs_done"], first["budget_stopped"], first["trained_now"]) == (1, True, True)
    run = Path(first["train_run"])
    assert Path(first["checkpoint"]).is_file() and (run / BUDGET_NAME).is_file()
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 2  # header + the one epoch
    again = _train(spec, "hps-06-0.25x", tmp_path, None)
    assert (again["trained_now"], again["budget_stopped"], again["checkpoint"]) == (False, True, first["checkpoint"])


def test_a_damaged_study_is_one_error_naming_the_file_not_an_internal_error(capsys, tmp_path):
    import sqlite3

    from toolchain.sweep.study import _distributions, open_study, sweep_folder

    space = tmp_path / "s.toml"
    space.write_text('[sweep]\nname = "damaged"\n[space]\ndepth = [[1, 1, 1, 1]]\nwidth = [0.25, 0.5]\n')
    spec = load_space(space)
    folder = sweep_folder(tmp_path, "damaged")
    folder.mkdir(parents=True)
    study = open_study(spec, folder)
    study.tell(study.ask(_distributions(spec)), [50.0, 0.2, 1000.0])
    code, err = _cli(capsys, "sweep", "show", space, "--artifacts", tmp_path)
    assert code == 0, err
    with sqlite3.connect(folder / "study.db") as connection:  # the study opens, its trials cannot be read
        connection.execute("DROP TABLE trial_values")
    code, err = _cli(capsys, "sweep", "show", space, "--artifacts", tmp_path)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 2, err
    assert lines[0] == (f"error: the sweep study {folder / 'study.db'} is damaged: trial 0 is complete without "
                        "its 3 objective values") and lines[1].startswith("hint: ")


def test_a_study_locked_by_another_program_mid_read_is_one_error_naming_the_file(tmp_path):
    import sqlite3

    from toolchain.errors import ArtifactError
    from toolchain.sweep.study import _distributions, _storage_errors, open_study, summarize

    spec = parse_space(SPACE)
    study = open_study(spec, tmp_path)
    study.tell(study.ask(_distributions(spec)), [50.0, 0.2, 1000.0])
    holder = sqlite3.connect(tmp_path / "study.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another program writes the file (SQLite waits 5 s, then gives up)
    try:
        with pytest.raises(ArtifactError) as raised:
            with _storage_errors(tmp_path):
                summarize(spec, study, tmp_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert raised.value.message.startswith(f"the sweep study {tmp_path / 'study.db'} failed: ")
    assert "locked" in raised.value.message and "nothing else writes the file" in raised.value.hint
