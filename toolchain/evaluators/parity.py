"""Parity: does a rewritten model still compute what the reference computes, on real eval images?

The tolerance is ``atol + rtol x the largest |logit| of the reference``: float32 keeps ~7 digits, so a
briefly trained net whose logits reach 1e8 differs by ~1e2 after export for rounding alone.
"""

from __future__ import annotations

import numpy as np

from toolchain.errors import ParityError


def max_abs_diff(reference: np.ndarray, candidate: np.ndarray) -> float:
    """max |reference - candidate| over all outputs (inf if the shapes differ)."""
    if reference.shape != candidate.shape:
        return float("inf")
    return float(np.max(np.abs(reference.astype(np.float64) - candidate.astype(np.float64))))


def _largest_logit(reference: np.ndarray) -> float:
    return float(np.max(np.abs(reference))) if reference.size else 0.0


def parity_tolerance(reference: np.ndarray, atol: float, rtol: float) -> float:
    """The largest max |d| parity accepts: atol + rtol x the largest |logit| of the reference."""
    return atol + rtol * _largest_logit(reference)


def check_parity(reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float, what: str) -> float:
    """The measured max |d| between two stages' logits, or a ParityError showing it."""
    diff = max_abs_diff(reference, candidate)
    tolerance = parity_tolerance(reference, atol, rtol)
    if not diff <= tolerance:
        shown = "shapes differ" if diff == float("inf") else f"max |d| = {diff:.3g}"
        largest = _largest_logit(reference)
        hint = ("check the model for ops that export differently (or loosen --atol/--rtol if the difference is "
                "acceptable)")
        if largest > 1e4:  # float32 rounding of huge intermediate values, not a wrong op
            hint = (f"logits reach {largest:.3g}: the model is numerically ill-conditioned (e.g. BatchNorm channels "
                    "with near-zero variance after brief training); train longer, or pass --rtol 1e-4")
        raise ParityError(f"{what}: {shown} on {len(reference)} eval images, above the tolerance {tolerance:.3g} "
                          f"(--atol {atol:g} + --rtol {rtol:g} x max |logit| {largest:.3g})", hint)
    return diff
