"""Early stop: a search that stops improving ends before its budget, and one that improves does not."""

from __future__ import annotations

import json

from cotune.tuner.search.replay import load_kernel_tuner_cache, replay
from cotune.tuner.search.stopping import StallDetector
from cotune.tuner.spec.job import parse_spec


def test_stalls_after_patience_evaluations_without_a_one_percent_gain():
    stall = StallDetector(patience=3)
    assert not stall.update(10.0)
    assert not stall.update(9.95)  # 0.5 %: not a gain
    assert not stall.update(9.95)
    assert stall.update(9.95)


def test_a_real_gain_resets_the_count_and_direction_matters():
    stall = StallDetector(patience=2)
    assert not stall.update(10.0) and not stall.update(10.0)
    assert not stall.update(9.0)  # 10 % faster
    assert not stall.update(9.0)
    up = StallDetector(patience=2, minimize=False)
    assert not up.update(100.0) and not up.update(120.0) and not up.update(121.0)
    assert up.update(121.0)


def test_failures_before_any_success_count_towards_patience():
    stall = StallDetector(patience=2)
    assert not stall.update(None)
    assert stall.update(None)


def test_replay_stops_early_on_a_flat_cache(tmp_path):
    cache = {
        "tune_params_keys": ["a", "b"],
        "tune_params": {"a": list(range(10)), "b": list(range(10))},
        "cache": {
            f"{a},{b}": {"a": a, "b": b, "time": 1.0, "compile_time": 0, "benchmark_time": 0}
            for a in range(10)
            for b in range(10)
        },
    }
    path = tmp_path / "flat.json"
    path.write_text(json.dumps(cache))
    data = load_kernel_tuner_cache(path)
    result = replay(data, sampler="random", budget=100, seed=0, patience=5)
    assert len(result.best_so_far) == 6  # the first evaluation sets the best, five more without a gain


def test_spec_accepts_patience():
    spec = parse_spec("name: p\nkernel: noop\nproblems: [{sleep_ms: 1}]\nbudget: {trials: 50, patience: 10}\n")
    assert spec.budget.patience == 10


def test_a_local_study_stops_once_patience_evaluations_gain_nothing(tune_one):
    """``cotune tune`` stops a problem at the first evaluation that completes a run of ``patience``
    evaluations without a 1 % gain, in the order they finished."""
    from cotune.tuner.measure.trial_record import counted

    _, study, _ = tune_one(
        "name: stall\nkernel: noop\nproblems: [{sleep_ms: 5}]\nbudget: {trials: 80, patience: 5}\n"
        "sampler: {name: random, seed: 0}\nbench: {warmup: 0, repeats: 3}\n"
    )
    evaluated = sorted((t for t in study.trials if counted(t)), key=lambda t: (t.datetime_complete, t.number))
    assert len(evaluated) > 5
    ref, since = None, 0
    for t in evaluated:  # the rule, recomputed: stalled exactly at the last evaluation, not before
        if ref is None or t.value < ref * 0.99:  # a gain is 1 % on the last gain's value
            ref, since = t.value, 0
        else:
            since += 1
        assert since < 5 or t is evaluated[-1]
    # every config of noop sleeps alike, so it stops early; only timing noise beyond 1 % at every turn could
    # carry it to its budget, and then it must not have stalled anywhere
    assert since == 5 or (len(evaluated) == 80 and since < 5)
    assert since == 5
