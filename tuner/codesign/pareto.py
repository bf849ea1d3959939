"""Time-and-energy studies: the Pareto front of re-measured configs, and the export policy that picks one.

Policies: ``fastest`` (lowest time on the front), ``most_efficient`` (lowest joules per call), and
``fastest_within_energy`` (the fastest config whose energy is at most ``1 + slack`` times the front's
lowest: a few percent of energy traded for most of the speed, the usual choice for a power-capped fleet).
"""

from __future__ import annotations

from collections.abc import Sequence

from cotune.tuner.spec.job import Policy
from cotune.tuner.track.tracker import BestLog

__all__ = ["Policy", "front", "front_json", "select"]


def front(candidates: Sequence[BestLog]) -> list[BestLog]:
    """The non-dominated candidates by (re-measured time, energy), fastest first."""

    def point(b: BestLog) -> tuple[float, float]:
        return b.remeasured.median_s, b.remeasured.energy_j

    def dominated(b: BestLog) -> bool:
        t, e = point(b)
        others = (point(o) for o in candidates if o is not b)
        return any(ot <= t and oe <= e and (ot < t or oe < e) for ot, oe in others)

    return sorted((b for b in candidates if not dominated(b)), key=lambda b: point(b))


def select(candidates: Sequence[BestLog], policy: Policy, slack: float) -> BestLog | None:
    pareto = front(candidates)
    if not pareto:
        return None
    if policy is Policy.FASTEST:
        return pareto[0]
    lowest = min(b.remeasured.energy_j for b in pareto)
    if policy is Policy.MOST_EFFICIENT:
        return next(b for b in pareto if b.remeasured.energy_j == lowest)
    return next(b for b in pareto if b.remeasured.energy_j <= lowest * (1 + slack))


def front_json(pareto: Sequence[BestLog]) -> list[dict]:
    return [
        {
            "trial": b.trial_number,
            "config": b.config.values,
            "time_s": b.remeasured.median_s,
            "energy_j": b.remeasured.energy_j,
        }
        for b in pareto
    ]
