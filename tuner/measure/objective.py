"""The one choke point between the sampler and the hardware.

For each proposed config: constraint check (infeasible -> PRUNED with the reason, never compiled),
de-duplication (a config measured before reuses its result), then compile, verify and benchmark in an
isolated child process; any failure becomes a FAIL result with its reason.

A trial's benchmark screens (:meth:`TrialObjective.measure_trial`): the GPU stopwatch times a few
milliseconds of calls first and spends the full timing only on a candidate within ``screen_margin`` of the
best median so far. A re-measure (:meth:`TrialObjective.measure`) always times in full.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from cotune.tuner.measure.isolation import CandidateRunner, Request
from cotune.tuner.measure.kernel import BenchSettings
from cotune.tuner.space.search_space import SearchSpace
from cotune.tuner.types import (
    Config,
    DeviceProfile,
    Failure,
    FailureKind,
    Measurement,
    Objective,
    Problem,
    TrialStatus,
)


@dataclass(frozen=True)
class TrialResult:
    config: Config
    status: TrialStatus
    measurement: Measurement | None = None
    failure: Failure | None = None
    duplicate_of: int | None = None
    duration_s: float = 0.0

    @property
    def reason(self) -> str | None:
        return str(self.failure) if self.failure else None


def directions(objective: Objective) -> list[str]:
    if objective is Objective.TIME_AND_ENERGY:
        return ["minimize", "minimize"]
    return ["maximize" if objective is Objective.MAX_THROUGHPUT else "minimize"]


def score(measurement: Measurement, objective: Objective) -> float | list[float]:
    """The value(s) told to Optuna: seconds, GFLOP/s, joules per call, or [seconds, joules]."""
    if objective is Objective.MAX_THROUGHPUT:
        return measurement.gflops
    if objective is Objective.MIN_ENERGY:
        return measurement.energy_j
    if objective is Objective.TIME_AND_ENERGY:
        return [measurement.median_s, measurement.energy_j]
    return measurement.median_s


def primary(measurement: Measurement, objective: Objective) -> float:
    """One number to show and compare: the score, or its time for a time-and-energy study."""
    value = score(measurement, objective)
    return value[0] if isinstance(value, list) else value


class TrialObjective:
    def __init__(
        self,
        space: SearchSpace,
        problem: Problem,
        device: DeviceProfile,
        runner: CandidateRunner,
        bench: BenchSettings,
        program_key: Callable[[Config], str] | None = None,
    ) -> None:
        self.space = space
        self.problem = problem
        self.device = device
        self.runner = runner
        self.bench = bench
        # configs with one key run one program (Kernel.program_key): measured once, reused for the rest
        self.program_key: Callable[[Config], str] = program_key or (lambda config: config.key)
        self._seen: dict[str, tuple[int, TrialResult]] = {}
        # Programs another worker is measuring right now (service mode), by program key -> trial number.
        self.in_flight: dict[str, int] = {}

    def remember(self, number: int, result: TrialResult) -> None:
        """Record a measured (or failed) config so a repeat proposal, or a config running the same program,
        reuses it."""
        if result.duplicate_of is None and result.status is not TrialStatus.PRUNED:
            self._seen.setdefault(self.program_key(result.config), (number, result))

    def result_of(self, config: Config) -> TrialResult | None:
        """The result of the config's program, if it was measured (or failed) in this study."""
        seen = self._seen.get(self.program_key(config))
        return None if seen is None else seen[1]

    @property
    def measured(self) -> int:
        return len(self._seen)

    def accounted(self) -> set[str]:
        """Programs measured, failed or being measured: no new ask can measure one of these."""
        return self._seen.keys() | self.in_flight.keys()

    def evaluate(self, config: Config) -> TrialResult:
        return self.screen(config) or self.measure_trial(config)

    def best_median_s(self) -> float | None:
        """The lowest median time measured so far (by this process or, loaded by ``remember``, by others)."""
        medians = [r.measurement.median_s for _, r in self._seen.values() if r.measurement is not None]
        return min(medians, default=None)

    def trial_bench(self) -> BenchSettings:
        """The timing settings of the next trial: screening against the best so far, unless the objective
        needs energy (read over a fixed window, so a short timing saves nothing) or nothing is measured yet
        (the first candidate sets the bar with a full timing)."""
        best = self.best_median_s()
        if self.bench.energy or self.bench.screen_target_s <= 0 or best is None:
            return self.bench
        return replace(self.bench, screen_cutoff_s=best * (1 + self.bench.screen_margin))

    def measure_trial(self, config: Config) -> TrialResult:
        """Measure a proposed config as a trial: screened (see :class:`BenchSettings`)."""
        return self.measure(config, self.trial_bench())

    def screen(self, config: Config) -> TrialResult | None:
        """The result a config gets without running it (infeasible, measured before, in flight), or None."""
        reason = self.space.violation(config, self.problem, self.device)
        if reason:
            return TrialResult(config, TrialStatus.PRUNED, failure=Failure(FailureKind.INFEASIBLE, reason))
        program = self.program_key(config)
        if program in self._seen:
            number, prior = self._seen[program]
            return replace(prior, config=config, duplicate_of=number, duration_s=0.0)
        if program in self.in_flight:
            number = self.in_flight[program]
            failure = Failure(FailureKind.IN_FLIGHT, f"trial {number} is measuring this config's program")
            return TrialResult(config, TrialStatus.PRUNED, failure=failure, duplicate_of=number)
        return None

    def measure(self, config: Config, bench: BenchSettings) -> TrialResult:
        """Measure with these settings as they are (a re-measure passes the study's, which never screen)."""
        start = time.perf_counter()
        out = self.runner.run(Request(self.problem, config, self.device, bench))
        elapsed = time.perf_counter() - start
        if isinstance(out, Measurement) and bench.energy and out.energy_j <= 0:
            out = Failure(FailureKind.RUNTIME, "the objective needs energy, and this measurement has no energy reading")
        if isinstance(out, Failure):
            return TrialResult(config, TrialStatus.FAIL, failure=out, duration_s=elapsed)
        return TrialResult(config, TrialStatus.OK, measurement=out, duration_s=elapsed)
