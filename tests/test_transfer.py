"""Warm starts: a new batch size first measures the winner of its nearest neighbour in the same storage, and
the cotune sampler models it from the neighbours' trials."""

from __future__ import annotations

import optuna
import pytest
from cotune.tuner.driver import StudySession, job_space, study_name, tune_job
from cotune.tuner.errors import SpecError
from cotune.tuner.measure.isolation import CandidateRunner
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.search.transfer import neighbour_trials
from cotune.tuner.spec.job import parse_spec
from cotune.tuner.track.tracker import NullTracker

SPEC = """
name: warm
kernel: c_matmul
problems:
  - {{M: [16, 64], N: 64, K: 64}}
budget: {{trials: 4}}
sampler: {{name: random, seed: 5, transfer: {transfer}}}
top_k: 1
bench: {{warmup: 0, repeats: 2, remeasure_repeats: 2}}
"""


def _first_trials(url: str, outcomes) -> tuple[dict, dict]:
    small, large = (optuna.load_study(study_name=o.study_name, storage=url) for o in outcomes)
    return small.user_attrs["best"]["config"], large.trials[0].params


@pytest.mark.parametrize("transfer", ["true", "winner"])
def test_the_next_batch_size_starts_from_the_previous_winner(tmp_path, cpu, transfer) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    outcomes = tune_job(parse_spec(SPEC.format(transfer=transfer)), url, cpu, NullTracker())
    small_best, large_first = _first_trials(url, outcomes)
    assert large_first == small_best
    # a rerun of the finished job asks nothing new, warm start or not
    before = [len(optuna.load_study(study_name=o.study_name, storage=url).trials) for o in outcomes]
    again = tune_job(parse_spec(SPEC.format(transfer="true")), url, cpu, NullTracker())
    assert [len(optuna.load_study(study_name=o.study_name, storage=url).trials) for o in again] == before


@pytest.mark.parametrize("transfer", ["false", "model"])
def test_the_winner_is_not_measured_first_when_transfer_leaves_it_out(tmp_path, cpu, transfer) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    outcomes = tune_job(parse_spec(SPEC.format(transfer=transfer)), url, cpu, NullTracker())
    large = optuna.load_study(study_name=outcomes[1].study_name, storage=url)
    assert not any(t.system_attrs.get("fixed_params") for t in large.trials)


def test_transfer_takes_only_the_documented_modes() -> None:
    with pytest.raises(SpecError, match="transfer"):
        parse_spec(SPEC.format(transfer="winners"))


def test_the_cotune_sampler_models_the_neighbours_trials(tmp_path, cpu) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    spec = parse_spec(SPEC.format(transfer="true").replace("name: random", "name: cotune"))
    outcomes = tune_job(spec, url, cpu, NullTracker())
    small, large = spec.expand()
    kernel = get_kernel(spec.kernel)

    (pairs,) = neighbour_trials(url, large, cpu, kernel.batch_dim, spec.objective.value, maximize=False)
    measured = optuna.load_study(study_name=outcomes[0].study_name, storage=url).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)
    )
    assert sorted(v for _, v in pairs) == sorted(t.value for t in measured)
    assert neighbour_trials(url, large, cpu, kernel.batch_dim, "max_throughput", maximize=True) == []

    def cotune(transfer: str):
        return parse_spec(SPEC.format(transfer=transfer).replace("name: random", "name: cotune"))

    with CandidateRunner() as runner:
        for each, expected in ((spec, 1), (cotune("model"), 1), (cotune("winner"), 0), (cotune("false"), 0)):
            name = study_name(each.name, large, cpu)
            session = StudySession(each, kernel, job_space(each, kernel), large, cpu, url, runner, NullTracker(), name)
            assert session.study.sampler.related_features == expected
