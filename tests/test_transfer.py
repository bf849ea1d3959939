"""Warm starts: a new batch size first measures the winners of its neighbours in the same storage."""

from __future__ import annotations

import optuna

from tuner.driver import tune_job
from tuner.spec import parse_spec
from tuner.tracker import NullTracker

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


def test_the_next_batch_size_starts_from_the_previous_winner(tmp_path, cpu) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    outcomes = tune_job(parse_spec(SPEC.format(transfer="true")), url, cpu, NullTracker())
    small_best, large_first = _first_trials(url, outcomes)
    assert large_first == small_best
    # a rerun of the finished job asks nothing new, warm start or not
    again = tune_job(parse_spec(SPEC.format(transfer="true")), url, cpu, NullTracker())
    assert [len(optuna.load_study(study_name=o.study_name, storage=url).trials) for o in again] == [
        len(optuna.load_study(study_name=o.study_name, storage=url).trials) for o in outcomes
    ]


def test_transfer_can_be_turned_off(tmp_path, cpu) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    outcomes = tune_job(parse_spec(SPEC.format(transfer="false")), url, cpu, NullTracker())
    large = optuna.load_study(study_name=outcomes[1].study_name, storage=url)
    assert not any(t.system_attrs.get("fixed_params") for t in large.trials)
