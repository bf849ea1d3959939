"""Precision as a tuned dimension: per shape, the fastest precision whose winner stays within the job's
accuracy bound (max relative error against fp32), with every precision's result reported beside it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cotune.tuner.types import Measurement, Objective, Problem


@dataclass(frozen=True)
class PrecisionOption:
    precision: str
    time_s: float
    gflops: float
    error: float
    within_bound: bool


@dataclass(frozen=True)
class PrecisionChoice:
    kernel: str
    shape: dict[str, int]
    bound: float
    options: tuple[PrecisionOption, ...]  # best first: fastest, or highest throughput

    @property
    def chosen(self) -> str | None:
        """The fastest precision within the bound, or None when none is."""
        return next((o.precision for o in self.options if o.within_bound), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "shape": self.shape,
            "accuracy_bound": self.bound,
            "chosen": self.chosen,
            "options": [o.__dict__ for o in self.options],
        }


def choose(
    winners: Iterable[tuple[Problem, Measurement]], bound: float, objective: Objective = Objective.MIN_TIME
) -> list[PrecisionChoice]:
    """Group re-measured winners by kernel and shape; rank each group's precisions by the job's objective
    (throughput for ``max_throughput``: a serving kernel's median time is a request latency, not its rate)."""
    groups: dict[tuple[str, tuple], list[PrecisionOption]] = {}
    for problem, m in winners:
        err = m.accuracy_error
        option = PrecisionOption(problem.dtype.value, m.median_s, m.gflops, err, err <= bound)
        groups.setdefault((problem.kernel, problem.shape), []).append(option)

    def rank(o: PrecisionOption) -> float:
        return -o.gflops if objective is Objective.MAX_THROUGHPUT else o.time_s

    return [
        PrecisionChoice(kernel, dict(shape), bound, tuple(sorted(options, key=rank)))
        for (kernel, shape), options in groups.items()
    ]
