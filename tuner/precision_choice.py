"""Precision as a tuned dimension: per shape, the fastest precision whose winner stays within the job's
accuracy bound (max relative error against fp32), with every precision's result reported beside it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tuner.types import Measurement, Problem


@dataclass(frozen=True)
class PrecisionOption:
    precision: str
    time_s: float
    error: float
    within_bound: bool


@dataclass(frozen=True)
class PrecisionChoice:
    kernel: str
    shape: dict[str, int]
    bound: float
    options: tuple[PrecisionOption, ...]  # fastest first

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


def choose(winners: Iterable[tuple[Problem, Measurement]], bound: float) -> list[PrecisionChoice]:
    """Group re-measured winners by kernel and shape; rank each group's precisions by time."""
    groups: dict[tuple[str, tuple], list[PrecisionOption]] = {}
    for problem, m in winners:
        option = PrecisionOption(problem.dtype.value, m.median_s, m.accuracy_error, m.accuracy_error <= bound)
        groups.setdefault((problem.kernel, problem.shape), []).append(option)
    return [
        PrecisionChoice(kernel, dict(shape), bound, tuple(sorted(options, key=lambda o: o.time_s)))
        for (kernel, shape), options in groups.items()
    ]
