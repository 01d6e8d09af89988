"""Parity: does a rewritten model still compute what the reference computes, on real eval images?

Judged per image, relative to that image's own logit scale: image i passes when its largest |d| is at
most ``atol + rtol x its largest |logit|`` (then its top-1 class can only change where the reference's
top-2 margin is within twice that: a near tie; the top-1 agreement is recorded beside). float32 keeps ~7 digits,
so a briefly trained net whose logits reach 1e7 on a few images differs there by ~1e1 for rounding alone,
while an image whose logits are ~10 keeps a tolerance of ~1e-4: one huge image does not loosen the others.
"""

from __future__ import annotations

import numpy as np

from toolchain.errors import ParityError

BASIS = "per image: max |d| <= atol + rtol x that image's largest |logit|"
ROUNDING_BASIS = BASIS + (" + 8 x how far float32 rounding alone moves that image's logits (float64 runs, "
                          "Monte Carlo rounding)")
# how many times float32 rounding's own effect on an image's logits (toolchain.evaluators.reference.
# float32_rounding, an estimate from two Monte Carlo runs) an export may err there: the export and the
# reference each err by a few such spreads, in any direction. Measured on hps-21-1x-v3 after the quick
# training (logits up to 3.8e18): onnxruntime's logits were off torch's by up to 5.1x the estimate.
ROUNDING_FACTOR = 8.0


def max_abs_diff(reference: np.ndarray, candidate: np.ndarray) -> float:
    """max |reference - candidate| over all outputs (inf if the shapes differ)."""
    if reference.shape != candidate.shape:
        return float("inf")
    return float(np.max(np.abs(reference.astype(np.float64) - candidate.astype(np.float64))))


def _rows(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float64).reshape(len(values), -1) if values.ndim else values.reshape(1, 1)


def sample_tolerances(reference: np.ndarray, atol: float, rtol: float,
                      rounding: np.ndarray | None = None) -> np.ndarray:
    """Per image, the largest |d| parity accepts: atol + rtol x that image's largest |logit|, plus
    ROUNDING_FACTOR x ``rounding`` (the reference's own float32 error on that image) when it is known."""
    rows = _rows(reference)
    tolerances = atol + rtol * (np.abs(rows).max(axis=1) if rows.size else np.zeros(len(rows)))
    return tolerances if rounding is None else tolerances + ROUNDING_FACTOR * np.asarray(rounding, dtype=np.float64)


def parity_tolerance(reference: np.ndarray, atol: float, rtol: float, rounding: np.ndarray | None = None) -> float:
    """The loosest per-image tolerance (what the manifest records beside the basis)."""
    tolerances = sample_tolerances(reference, atol, rtol, rounding)
    return float(tolerances.max()) if tolerances.size else atol


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """% of images whose top-1 class is the reference's."""
    rows, other = _rows(reference), _rows(candidate)
    return float((rows.argmax(axis=1) == other.argmax(axis=1)).mean() * 100.0) if len(rows) else 100.0


def check_parity(reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float, what: str,
                 rounding: np.ndarray | None = None) -> float:
    """The measured max |d| between two stages' logits, or a ParityError showing the worst image.

    ``rounding``: per image, the reference's own float32 error (see `sample_tolerances`).
    """
    if reference.shape != candidate.shape:  # (an inf logit also makes max_abs_diff inf: not a shape error)
        raise ParityError(f"{what}: shapes differ ({reference.shape} vs {candidate.shape})",
                          "check the model's output: the rewritten graph does not produce the same logits")
    finite = [np.isfinite(_rows(values)).all(axis=1) for values in (reference, candidate)]
    broken = ~(finite[0] & finite[1])
    if broken.any():  # NaN or inf: no tolerance means anything (it would read "max |d| = nan ... tolerance nan")
        first = int(np.flatnonzero(broken)[0])
        where = " and ".join(side for side, ok in zip(("the reference's", "the checked model's"), finite)
                             if not ok[first])
        raise ParityError(f"{what}: logits are not finite (NaN or inf) on {int(broken.sum())} of {len(broken)} "
                          f"eval images, first on image {first} ({where})",
                          "the network computes NaN or inf in float32: check the checkpoint for non-finite weights "
                          "(a diverged training run leaves them) or values that overflow float32")
    diff = max_abs_diff(reference, candidate)
    tolerances = sample_tolerances(reference, atol, rtol, rounding)
    per_image = np.abs(_rows(reference) - _rows(candidate)).max(axis=1)
    ratio = per_image / np.maximum(tolerances, 1e-300)
    worst = int(np.nanargmax(np.where(np.isnan(ratio), np.inf, ratio))) if ratio.size else 0
    if ratio.size and not per_image[worst] <= tolerances[worst]:
        largest = float(np.abs(_rows(reference)[worst]).max())
        hint = ("check the model for ops that export differently (or loosen --atol/--rtol if the difference is "
                "acceptable)")
        if largest > 1e4:  # float32 rounding of huge intermediate values, not a wrong op
            hint = (f"logits reach {largest:.3g}: the model is numerically ill-conditioned (e.g. BatchNorm channels "
                    "with near-zero variance after brief training); train longer, or pass --rtol 1e-4")
        own = "" if rounding is None else f" + {ROUNDING_FACTOR:g} x its float32 rounding {float(rounding[worst]):.3g}"
        raise ParityError(f"{what}: max |d| = {per_image[worst]:.3g} on eval image {worst} of {len(reference)}, above "
                          f"its tolerance {tolerances[worst]:.3g} (--atol {atol:g} + --rtol {rtol:g} x its max |logit| "
                          f"{largest:.3g}{own})", hint)
    return diff
