"""Design-space sweeps: a search space in TOML, an Optuna study in SQLite, trials on Ray.

    space.py   the sweep file: space, per-trial budget, export and bench settings (no optuna, no torch)
    trial.py   one trial on a Ray worker: a normal training run and a normal export
    study.py   the driver: ask/tell, Ray dispatch, the bench on the sweep's target, resume, sweep.json
    pareto.py  the Pareto front of stored trials
"""
