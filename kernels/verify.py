"""Comparison of a candidate's output with its reference."""

from __future__ import annotations

import numpy as np
from cotune.tuner.measure.kernel import CandidateError
from cotune.tuner.types import FailureKind


def max_rel_error(out: np.ndarray, ref: np.ndarray) -> float:
    """Largest absolute difference, relative to the reference's largest magnitude (robust to zeros)."""
    scale = float(np.max(np.abs(ref))) or 1.0
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    if not np.all(np.isfinite(diff)):
        return float("inf")
    return float(np.max(diff)) / scale


def check(out: np.ndarray, ref: np.ndarray, tolerance: float) -> float:
    """Return the error, or raise a WRONG_RESULT CandidateError if it exceeds ``tolerance``."""
    if out.shape != ref.shape:
        raise CandidateError(FailureKind.WRONG_RESULT, f"output shape {out.shape} != reference {ref.shape}")
    err = max_rel_error(out, ref)
    if not err <= tolerance:
        raise CandidateError(
            FailureKind.WRONG_RESULT, f"max relative error {err:.3g} exceeds tolerance {tolerance:.3g}"
        )
    return err
