"""The screening stopwatch's choke point: a trial is timed short first once something is measured, against the
best median so far; a re-measure and an energy objective never screen. The short-then-long timing itself runs
on a GPU (tests/test_gpu_evidence.py), and its effect on searches is simulated in bench/screening.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
from cotune.kernels.c_matmul.kernel import CMatmul
from cotune.tuner.measure.isolation import CandidateRunner
from cotune.tuner.measure.kernel import BenchSettings
from cotune.tuner.measure.objective import TrialObjective, TrialResult
from cotune.tuner.types import Config, Measurement, Problem, TrialStatus

CONFIG = {"TILE_M": 16, "TILE_N": 64, "TILE_K": 16, "UNROLL": 1, "LOOP_ORDER": "ikj"}


@pytest.fixture(scope="module")
def runner():
    with CandidateRunner() as r:
        yield r


def _objective(runner: CandidateRunner, cpu, **bench) -> TrialObjective:
    kernel = CMatmul()
    problem = Problem.make("c_matmul", {"M": 64, "N": 64, "K": 64}, "fp32")
    settings = BenchSettings(warmup=1, repeats=3, timeout_s=30, **bench)
    return TrialObjective(kernel.space(), problem, cpu, runner, settings)


def test_the_first_trial_is_timed_in_full_and_sets_the_cutoff(runner, cpu) -> None:
    objective = _objective(runner, cpu)
    assert objective.trial_bench().screen_cutoff_s is None
    first = objective.measure_trial(Config.make(CONFIG))
    assert first.status is TrialStatus.OK
    objective.remember(0, first)
    best = first.measurement.median_s
    assert objective.best_median_s() == best
    assert objective.trial_bench().screen_cutoff_s == pytest.approx(best * 1.1)
    # the study's own settings, which the top-k re-measure passes, never screen
    assert objective.bench.screen_cutoff_s is None


def test_the_cutoff_follows_the_best_result_a_study_holds(runner, cpu) -> None:
    """Results another worker measured reach the objective through ``remember``: a faster one lowers the bar,
    a slower one leaves it; a failure and a trial of the same program add nothing."""
    objective = _objective(runner, cpu, screen_margin=0.25)
    objective.remember(3, TrialResult(Config.make(CONFIG), TrialStatus.OK, Measurement((2e-3, 2e-3, 2e-3))))
    assert objective.trial_bench().screen_cutoff_s == pytest.approx(2.5e-3)
    other = Config.make({**CONFIG, "TILE_M": 32})
    objective.remember(4, TrialResult(other, TrialStatus.OK, Measurement((1e-3, 1.2e-3, 0.9e-3))))
    assert objective.trial_bench().screen_cutoff_s == pytest.approx(1.25e-3)
    slower = Config.make({**CONFIG, "TILE_M": 8})
    objective.remember(5, TrialResult(slower, TrialStatus.OK, Measurement((4e-3,))))
    objective.remember(6, TrialResult(Config.make({**CONFIG, "TILE_N": 8}), TrialStatus.FAIL))
    assert objective.trial_bench().screen_cutoff_s == pytest.approx(1.25e-3)


@pytest.mark.parametrize("settings", [{"energy": True}, {"screen_target_s": 0.0}])
def test_energy_objectives_and_screening_off_never_screen(runner, cpu, settings: dict) -> None:
    objective = _objective(runner, cpu, **settings)
    objective.remember(0, TrialResult(Config.make(CONFIG), TrialStatus.OK, Measurement((1e-3,), energy_j=1.0)))
    assert objective.trial_bench() == objective.bench
    assert objective.trial_bench().screen_cutoff_s is None


def test_default_settings_screen_a_few_milliseconds_within_ten_percent() -> None:
    """The defaults bench/screening.py simulated on every H100 recording (bench/results/screening_h100.json)."""
    bench = BenchSettings()
    assert (bench.screen_target_s, bench.screen_margin, bench.screen_cutoff_s) == (0.005, 0.1, None)
    assert replace(bench, screen_cutoff_s=1.0).target_s == bench.target_s


def test_a_trial_sends_the_cutoff_to_the_candidate_process_and_a_remeasure_does_not(cpu) -> None:
    class Recording(CandidateRunner):
        """The real runner, keeping the settings each request carried to the child."""

        sent: list[BenchSettings] = []

        def run(self, request):  # noqa: ANN001, ANN201
            self.sent.append(request.bench)
            return super().run(request)

    with Recording() as runner:
        objective = _objective(runner, cpu)
        objective.remember(0, objective.measure_trial(Config.make(CONFIG)))
        objective.measure_trial(Config.make({**CONFIG, "TILE_M": 32}))
        objective.measure(Config.make(CONFIG), replace(objective.bench, repeats=5))  # as _remeasure does
    cutoffs = [b.screen_cutoff_s for b in runner.sent]
    assert cutoffs[0] is None and cutoffs[1] == pytest.approx(objective.best_median_s() * 1.1)
    assert cutoffs[2] is None
