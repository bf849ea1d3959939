"""Trackers record a job's studies and trials somewhere a user can review them.

Contract: calls come from the single driver thread in order start_job, (start_study, log_trial*,
finish_study)*, close. A tracker may defer work (batching, a background thread) but must have written
everything by the time :meth:`Tracker.close` returns, and must not raise from ``log_trial`` for a
logging hiccup: a tuning run is never lost because a dashboard was slow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cotune.tuner.types import Config, Measurement, Problem, TrialStatus

if TYPE_CHECKING:
    import optuna
    from cotune.tuner.types import DeviceProfile


@dataclass(frozen=True)
class TrialLog:
    number: int
    config: Config
    status: TrialStatus
    value: float | None
    measurement: Measurement | None
    reason: str | None
    duplicate_of: int | None
    duration_s: float


@dataclass(frozen=True)
class BestLog:
    trial_number: int
    config: Config
    tuned: Measurement
    remeasured: Measurement

    def to_json(self) -> dict:
        """As a study keeps it, in its ``best`` user attribute."""
        return {
            "trial": self.trial_number,
            "config": self.config.values,
            "tuned": self.tuned.to_json(),
            "remeasured": self.remeasured.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict) -> BestLog:
        return cls(
            data["trial"],
            Config.make(data["config"]),
            Measurement.from_json(data["tuned"]),
            Measurement.from_json(data["remeasured"]),
        )


@dataclass(frozen=True)
class StudyInfo:
    job: str
    study_name: str
    problem: Problem
    device: DeviceProfile
    tags: dict[str, str]
    run_name: str | None = None  # short and distinct within the job (run_names); else the problem key


def run_names(problems: list[Problem]) -> dict[str, str]:
    """Short names for a job's studies, by problem key: the dims that differ between its problems, then the
    precision (``M=512 · fp32``), so runs listed side by side are told apart in their first characters
    instead of sharing a prefix the UI cuts. A job of one problem names all its dims."""
    varying = [k for k, _ in problems[0].shape if len({p.dims.get(k) for p in problems}) > 1] if problems else []
    out = {}
    for p in problems:
        dims = varying or [k for k, _ in p.shape]
        out[p.key] = " · ".join([*(f"{k}={p.dims[k]}" for k in dims), p.dtype.value])
    return out


class Tracker(Protocol):
    def start_job(self, job: str) -> None: ...

    def start_study(self, info: StudyInfo) -> str | None:
        """Begin a study; return an id users can follow (an MLflow parent run id), if any."""

    def log_trial(self, trial: TrialLog) -> None: ...

    def finish_study(self, best: BestLog | None, study: optuna.Study) -> bool:
        """Record the study's end; whether the tracking store now holds all of it (every trial, the summary).
        False is no error: the study is in Optuna, and the service's MLflow sync writes what is missing."""

    def close(self) -> None: ...


class NullTracker:
    """Records nothing; for benchmarks that measure the loop without tracking."""

    def start_job(self, job: str) -> None:
        pass

    def start_study(self, info: StudyInfo) -> str | None:
        return None

    def log_trial(self, trial: TrialLog) -> None:
        pass

    def finish_study(self, best: BestLog | None, study: optuna.Study) -> bool:
        return False  # it holds nothing

    def close(self) -> None:
        pass
