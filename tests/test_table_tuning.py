"""Tuning a table of batch sizes (``budget.table_patience``): bisection order, and a batch size whose tuned
neighbours share a winner measures that winner first and stops early, while one between disagreeing
neighbours keeps its whole budget."""

from __future__ import annotations

import optuna
import pytest
from cotune.tuner.driver import StudySession, job_space, study_name, tune_job
from cotune.tuner.errors import SpecError
from cotune.tuner.measure.isolation import CandidateRunner
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.search.transfer import table_order
from cotune.tuner.spec.job import parse_spec
from cotune.tuner.track.tracker import NullTracker
from cotune.tuner.types import Problem

SPEC = """
name: table
kernel: c_matmul
problems:
  - {{M: {ms}, N: 64, K: 64}}
budget: {{trials: {trials}, table_patience: 2}}
sampler: {{name: random, seed: 3}}
top_k: 1
bench: {{warmup: 0, repeats: 2, remeasure_repeats: 2}}
"""
A = {"LOOP_ORDER": "ikj", "TILE_K": 16, "TILE_M": 4, "TILE_N": 32, "UNROLL": 4}
SLOW = {"LOOP_ORDER": "kij", "TILE_K": 4, "TILE_M": 4, "TILE_N": 8, "UNROLL": 1}


def test_bisection_order_tunes_every_middle_between_two_tuned_neighbours() -> None:
    ms = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096]
    problems = [Problem.make("fused_moe", {"M": m, "E": 8, "H": 64, "I": 32, "topk": 2}, "bf16") for m in ms]
    other = Problem.make("fused_moe", {"M": 16, "E": 8, "H": 64, "I": 64, "topk": 2}, "bf16")
    order = table_order([*problems, other], "M")
    assert sorted(order, key=lambda p: p.key) == sorted([*problems, other], key=lambda p: p.key)
    seen = [p.dims["M"] for p in order if p.dims["I"] == 32]
    assert seen[:3] == [1, 4096, 64]
    for i, m in enumerate(seen[2:], start=2):
        assert any(s < m for s in seen[:i]) and any(s > m for s in seen[:i]), m
    assert order[-1] == other  # another table (another I) comes after, whole


def _finished_study(url: str, cpu, m: int, config: dict) -> None:
    """A finished study of the table's shape at batch size ``m`` whose winner is ``config``."""
    spec = parse_spec(SPEC.format(ms=[m], trials=1))
    (problem,) = spec.expand()
    study = optuna.create_study(storage=url, study_name=study_name("earlier", problem, cpu))
    attrs = {
        "job": "earlier",
        "problem": problem.to_json(),
        "device": cpu.to_json(),
        "objective": "min_time",
        "best": {"config": config},
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)


@pytest.mark.parametrize(("below", "above", "agree"), [(A, A, True), (A, SLOW, False)])
def test_a_row_between_agreeing_neighbours_gets_the_short_patience(tmp_path, cpu, below, above, agree) -> None:
    """The neighbours' winners are measured first; one program (or two within 2 % of each other here) means
    the table does not change at this batch size: the short patience. SLOW runs several times slower."""
    url = f"sqlite:///{tmp_path}/o.db"
    _finished_study(url, cpu, 4, below)
    _finished_study(url, cpu, 16, above)
    spec = parse_spec(SPEC.format(ms=[8], trials=20))
    (problem,) = spec.expand()
    kernel = get_kernel(spec.kernel)
    with CandidateRunner() as runner:
        name = study_name(spec.name, problem, cpu)
        session = StudySession(spec, kernel, job_space(spec, kernel), problem, cpu, url, runner, NullTracker(), name)
        first = session.settle_table_row(url)
        assert [c.values for c in first] == ([A] if agree else [A, SLOW])
        session.enqueue(first)
        assert session.patience is None  # undecided until both are measured here
        for _ in first:
            session.step()
        session.stalled()
    assert session.patience == (2 if agree else None)
    assert session.study.user_attrs["table_row"]["neighbours_agree"] is agree


def test_a_table_job_runs_in_bisection_order_and_records_what_it_spent(tmp_path, cpu) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    outcomes = tune_job(parse_spec(SPEC.format(ms=[4, 8, 16, 32, 64], trials=6)), url, cpu, NullTracker())
    assert [o.problem.dims["M"] for o in outcomes] == [4, 64, 16, 8, 32]
    for o in outcomes:
        study = optuna.load_study(study_name=o.study_name, storage=url)
        cost = study.user_attrs["search"]
        assert cost["evaluations"] == o.measured + o.failed <= 6 and cost["grid"] == 4116
        row = study.user_attrs["table_row"]
        if o.problem.dims["M"] in (4, 64):  # the ends: a neighbour on one side at most
            assert row == {"neighbours_agree": False}
        else:
            assert row["patience"] == (2 if row["neighbours_agree"] else None) and row["gap"] >= 0


def test_table_patience_is_refused_for_a_pareto_front() -> None:
    text = SPEC.format(ms=[1, 2], trials=4).replace("kernel: c_matmul", "kernel: triton_matmul")
    text = text.replace("{M: [1, 2], N: 64, K: 64}", "{M: [16, 32], N: 64, K: 64}") + "objective: time_and_energy\n"
    text += "precisions: [bf16]\n"
    with pytest.raises(SpecError, match="table_patience"):
        parse_spec(text)
