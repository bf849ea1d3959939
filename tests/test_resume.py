"""Resumable jobs: running a job again continues each study up to its budget and measures nothing twice;
trials a dead run left RUNNING are failed at start; ``budget.wall_time_s`` ends a problem on time.

Each promise was checked against a broken driver (see the commit that added this file)."""

from __future__ import annotations

import optuna
import pytest
from cotune.tuner.driver import StudySession, job_space, study_name, tune_job
from cotune.tuner.measure.isolation import CandidateRunner
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.measure.trial_record import counted, record
from cotune.tuner.spec.job import parse_spec
from cotune.tuner.track.tracker import NullTracker
from cotune.tuner.types import FailureKind

SPEC = """
name: resume
kernel: noop
problems:
  - {{sleep_ms: [1, 2]}}
budget: {{trials: {trials}{wall}}}
sampler: {{name: random, seed: 4}}
top_k: 1
bench: {{warmup: 0, repeats: 1, remeasure_repeats: 1}}
"""


class Interrupt(Exception):
    """Stands for Ctrl-C in the middle of a job."""


def _spec(trials: int, wall: str = ""):
    return parse_spec(SPEC.format(trials=trials, wall=wall))


def _measured(url: str, name: str) -> list:
    """The trials of a study that measured a config (counted evaluations)."""
    study = optuna.load_study(study_name=name, storage=url)
    return [t for t in study.get_trials(deepcopy=False) if counted(t)]


def test_an_interrupted_job_resumes_to_its_budget_without_measuring_a_config_twice(tmp_path, cpu) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    seen: list[int] = []

    def stop_after_three(progress) -> None:
        seen.append(progress.measured)
        if progress.measured >= 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        tune_job(_spec(8), url, cpu, NullTracker(), on_progress=stop_after_three)
    first = optuna.load_study(study_name=study_name("resume", _spec(8).expand()[0], cpu), storage=url)
    before = [t.params for t in first.get_trials(deepcopy=False) if counted(t)]
    assert len(before) == 3

    outcomes = tune_job(_spec(8), url, cpu, NullTracker())
    for o in outcomes:
        measured = _measured(url, o.study_name)
        keys = [tuple(sorted(t.params.items())) for t in measured]
        assert len(measured) == 8, "each study ends at its budget, the interrupted one included"
        assert len(set(keys)) == 8, "no config measured twice across the two runs"
    assert all(p in [t.params for t in _measured(url, outcomes[0].study_name)] for p in before)


def test_a_finished_job_run_again_measures_nothing_new(tmp_path, cpu) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    outcomes = tune_job(_spec(5), url, cpu, NullTracker())
    before = {o.study_name: len(optuna.load_study(study_name=o.study_name, storage=url).trials) for o in outcomes}
    again = tune_job(_spec(5), url, cpu, NullTracker())
    after = {o.study_name: len(optuna.load_study(study_name=o.study_name, storage=url).trials) for o in again}
    assert after == before
    assert [o.measured for o in again] == [5, 5]


def test_a_trial_left_running_by_a_dead_run_is_failed_at_start_and_not_counted(tmp_path, cpu) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    spec = _spec(3)
    problem = spec.expand()[0]
    kernel = get_kernel(spec.kernel)
    name = study_name(spec.name, problem, cpu)
    with CandidateRunner() as runner:
        session = StudySession(spec, kernel, job_space(spec, kernel), problem, cpu, url, runner, NullTracker(), name)
        orphan = session.study.ask(session._distributions)  # a run that died before telling it
    tune_job(spec, url, cpu, NullTracker())
    study = optuna.load_study(study_name=name, storage=url)
    lost = study.trials[orphan.number]
    assert lost.state is optuna.trial.TrialState.FAIL
    assert record(lost)["failure_kind"] == FailureKind.WORKER_LOST.value and not counted(lost)
    assert not [t for t in study.trials if t.state is optuna.trial.TrialState.RUNNING]
    assert len(_measured(url, name)) == 3


def test_wall_time_ends_each_problem_on_time(tmp_path, cpu) -> None:
    """Each measured trial sleeps at least 0.2 s, so a 1 s wall-time budget fits at most 5 trials started
    before the deadline plus the one running at it; a loaded machine only measures fewer."""
    url = f"sqlite:///{tmp_path}/o.db"
    text = SPEC.format(trials=30, wall=", wall_time_s: 1").replace("[1, 2]", "200")
    (outcome,) = tune_job(parse_spec(text), url, cpu, NullTracker())
    assert 1 <= outcome.measured <= 6
