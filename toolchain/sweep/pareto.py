"""The Pareto front of stored trials: those no other trial beats on every objective (no optuna needed)."""

from __future__ import annotations

from typing import Sequence


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether `a` is at least as good as `b` on every objective and better on one."""
    better = False
    for x, y, direction in zip(a, b, directions):
        gain = (x - y) if direction == "maximize" else (y - x)
        if gain < 0:
            return False
        better |= gain > 0
    return better


def pareto_front(values: dict[int, Sequence[float]], directions: Sequence[str]) -> list[int]:
    """The keys (trial numbers) whose values no other entry dominates, in key order."""
    return sorted(key for key, mine in values.items()
                  if not any(dominates(other, mine, directions) for k, other in values.items() if k != key))
