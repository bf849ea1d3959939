"""The choke point against a real compiler and a real child process: every failure is a trial result."""

from __future__ import annotations

from pathlib import Path

import pytest
from cotune.kernels.c_matmul.kernel import CMatmul
from cotune.tuner.measure.isolation import CandidateRunner
from cotune.tuner.measure.kernel import BenchSettings
from cotune.tuner.measure.objective import TrialObjective
from cotune.tuner.space.search_space import load_space
from cotune.tuner.types import Config, FailureKind, Problem, TrialStatus

DATA = Path(__file__).parent / "data"
BASE = {"TILE_M": 16, "TILE_N": 64, "TILE_K": 16, "UNROLL": 1, "LOOP_ORDER": "ikj"}


@pytest.fixture(scope="module")
def runner():
    with CandidateRunner() as r:
        yield r


@pytest.fixture
def objective(runner, cpu):
    kernel = CMatmul()
    space = load_space(DATA / "crash_space.yaml", predicates=kernel.predicates)
    problem = Problem.make("c_matmul", {"M": 64, "N": 64, "K": 64}, "fp32")
    return TrialObjective(space, problem, cpu, runner, BenchSettings(warmup=1, repeats=3, timeout_s=10))


def cfg(hook: int) -> Config:
    return Config.make({**BASE, "CRASH_ON_PURPOSE": hook})


def test_good_candidate_is_measured_and_verified(objective):
    r = objective.evaluate(cfg(0))
    assert r.status is TrialStatus.OK
    assert len(r.measurement.times_s) == 3 and r.measurement.median_s > 0
    assert r.measurement.max_rel_error < 1e-4 and r.measurement.gflops > 0


@pytest.mark.parametrize(
    ("hook", "kind", "text"),
    [
        (1, FailureKind.CRASH, "signal SIGSEGV"),
        (2, FailureKind.TIMEOUT, "no result within 10 s"),
        (3, FailureKind.WRONG_RESULT, "exceeds tolerance"),
    ],
)
def test_failures_become_fail_results_and_the_tuner_goes_on(objective, hook, kind, text):
    r = objective.evaluate(cfg(hook))
    assert r.status is TrialStatus.FAIL and r.failure.kind is kind and text in r.failure.message
    assert objective.evaluate(cfg(0)).status is TrialStatus.OK  # a fresh child took over


def test_compile_error_is_a_fail_with_the_compiler_message(objective):
    bad = objective.measure(Config.make({**BASE, "LOOP_ORDER": "nonsense"}), objective.bench)
    assert bad.failure.kind is FailureKind.COMPILE and "bad define" in bad.failure.message


def test_duplicates_reuse_the_earlier_result(objective):
    first = objective.evaluate(cfg(0))
    objective.remember(7, first)
    again = objective.evaluate(cfg(0))
    assert again.duplicate_of == 7 and again.measurement == first.measurement


def test_a_config_running_a_measured_program_reuses_its_result_without_running(runner, cpu, objective):
    """Kernel.program_key: configs that run one program are measured once. Here the key ignores the crash
    hook, so the twin below would crash its child if it ran at all."""

    def ignoring_the_hook() -> TrialObjective:
        key = lambda c: Config.make({k: v for k, v in c.params if k != "CRASH_ON_PURPOSE"}).key  # noqa: E731
        return TrialObjective(objective.space, objective.problem, cpu, runner, objective.bench, program_key=key)

    same = ignoring_the_hook()
    first = same.evaluate(cfg(0))
    same.remember(3, first)
    twin = same.evaluate(cfg(1))
    assert twin.status is TrialStatus.OK and twin.duplicate_of == 3 and twin.config == cfg(1)
    assert twin.measurement == first.measurement and same.measured == 1

    other = ignoring_the_hook()  # another worker is measuring the program right now
    other.in_flight = {other.program_key(cfg(0)): 9}
    waiting = other.screen(cfg(1))
    assert waiting.status is TrialStatus.PRUNED and waiting.duplicate_of == 9
    assert waiting.failure.kind is FailureKind.IN_FLIGHT


def test_one_slow_call_does_not_make_a_stable_timing_look_noisy():
    from cotune.tuner.types import Measurement

    steady = Measurement(times_s=(1.0e-3,) * 14 + (5.0e-3,))  # one call 5x slower, as a page fault makes
    assert steady.spread < 0.01
    noisy = Measurement(times_s=(1.0e-3, 1.5e-3) * 7)
    assert noisy.spread > 0.3
    assert Measurement(times_s=(1.0e-3,)).spread == 0.0
