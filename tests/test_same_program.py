"""Configs that run one program (Kernel.program_key) cost one measurement and one unit of budget."""

from __future__ import annotations

from cotune.kernels.noop import Noop
from cotune.kernels.triton_matmul import TritonMatmul
from cotune.tuner.driver import StudySession
from cotune.tuner.measure.isolation import CandidateRunner
from cotune.tuner.measure.trial_record import TRIAL_ATTR, counted
from cotune.tuner.spec.job import parse_spec
from cotune.tuner.store.studies import open_storage
from cotune.tuner.track.tracker import NullTracker
from cotune.tuner.types import Config, Problem

SPEC = "name: twins\nkernel: noop\nproblems: [{sleep_ms: 1}]\nbudget: {trials: 40}\nbench: {warmup: 0, repeats: 1}\n"


class NoopIgnoringY(Noop):
    """The noop kernel, declaring that y changes nothing: its 21 x 16 configs are 21 programs."""

    def program_key(self, problem: Problem, config: Config) -> str:
        return Config.make({**config.values, "y": 0}).key


def _session(tmp_path, cpu, runner: CandidateRunner) -> StudySession:
    """A study of NoopIgnoringY under SPEC, on SQLite in tmp_path."""
    spec = parse_spec(SPEC)
    kernel = NoopIgnoringY()
    (problem,) = spec.expand()
    storage = open_storage(f"sqlite:///{tmp_path}/studies.db")
    return StudySession(spec, kernel, kernel.space(), problem, cpu, storage, runner, NullTracker(), "s")


def test_a_study_measures_each_program_once_and_counts_programs_against_its_budget(tmp_path, cpu):
    with CandidateRunner() as runner:
        session = _session(tmp_path, cpu, runner)
        assert session.feasible_budget() == 21  # 40 asked, but there are only 21 programs
        session.enqueue([Config.make({"x": 8, "y": 5})])
        session.study.enqueue_trial({"x": 8, "y": 9})  # a twin of the first, as a transfer or seed might be
        while session.objective.measured < session.feasible_budget():
            assert session.step_until_measured() is not None
    trials = session.study.get_trials(deepcopy=False)
    measured = [t for t in trials if counted(t)]
    assert sorted(t.params["x"] for t in measured) == [2**e for e in range(21)]
    twin = trials[1]
    assert twin.params == {"x": 8, "y": 9} and twin.user_attrs[TRIAL_ATTR]["duplicate_of"] == 0
    assert twin.value == trials[0].value  # the sampler learns the twin's time without a measurement


def test_a_step_past_the_last_program_ends_at_once(tmp_path, cpu):
    """A service ticket beyond the space's program count gets "exhausted" after one repeat, not after
    MAX_IDLE_PROPOSALS repeats each stored in the study."""
    with CandidateRunner() as runner:
        session = _session(tmp_path, cpu, runner)
        for _ in range(21):
            assert session.step_until_measured() is not None
        asked = len(session.study.get_trials(deepcopy=False))
        assert session.step_until_measured() is None
        assert len(session.study.get_trials(deepcopy=False)) == asked + 1


def test_a_service_study_gets_at_most_one_ticket_per_program(cpu):
    from cotune.worker.dispatch import study_budget

    kernel = NoopIgnoringY()
    (problem,) = parse_spec(SPEC).expand()
    assert study_budget(40, kernel, kernel.space(), problem, cpu) == 21
    assert study_budget(5, kernel, kernel.space(), problem, cpu) == 5
    # a GPU with no recorded profile: the space's size caps it, and the worker's screen does the rest
    assert study_budget(400, kernel, kernel.space(), problem, None) == 336


def test_triton_matmul_programs_follow_the_grid_rows() -> None:
    """GROUP_M at or above ceil(M / BLOCK_M) gives one program order; below it, each value is its own."""
    kernel = TritonMatmul()
    base = {"BLOCK_N": 64, "BLOCK_K": 64, "SPLIT_K": 1, "num_warps": 4, "num_stages": 3}

    def programs(m: int, block_m: int) -> int:
        problem = Problem.make("triton_matmul", {"M": m, "N": 4096, "K": 4096}, "bf16")
        configs = [Config.make({**base, "BLOCK_M": block_m, "GROUP_M": g}) for g in (1, 4, 8, 16)]
        return len({kernel.program_key(problem, c) for c in configs})

    assert programs(16, 16) == 1  # a decode batch: one row of programs
    assert programs(128, 32) == 2  # four rows: GROUP_M=1, and 4/8/16 alike
    assert programs(4096, 64) == 4  # 64 rows: every GROUP_M is its own order
