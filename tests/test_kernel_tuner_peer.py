"""The Kernel Tuner peer (bench/kernel_tuner_peer.py): a seed fixes what each of its strategies evaluates,
whatever ran before it in the process, so the peer columns of the benchmark can be repeated."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("kernel_tuner")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from cotune.tuner.search.replay import load_recording  # noqa: E402
from kernel_tuner_peer import kt_best_so_far  # noqa: E402


def tile_cache(path: Path) -> Path:
    """A 6 x 6 x 4 tile space with one basin and a failed corner: enough room for the strategies' random
    starts to differ between seeds."""
    sizes = [1, 2, 4, 8, 16, 32]
    cache = {}
    for x in sizes:
        for y in sizes:
            for u in range(4):
                time = 1 + abs(x - 8) / 4 + abs(y - 4) / 2 + (u - 2) ** 2 / 8
                cache[f"{x},{y},{u}"] = {
                    "block_x": x,
                    "block_y": y,
                    "unroll": u,
                    "time": "RuntimeFailedConfig" if x * y > 512 else time,
                    "compile_time": 50.0,
                    "benchmark_time": 10.0,
                }
    keys = ["block_x", "block_y", "unroll"]
    doc = {"tune_params_keys": keys, "tune_params": {"block_x": sizes, "block_y": sizes, "unroll": [0, 1, 2, 3]}}
    doc |= {"device_name": "test GPU", "kernel_name": "tiles", "problem_size": [1024], "objective": "time"}
    path.write_text(json.dumps(doc | {"cache": cache}))
    return path


# bayes_opt and diff_evo start from scipy's Latin hypercube, which takes fresh OS entropy unless told
# otherwise; importing bayes_opt's module draws from `random`.
@pytest.mark.parametrize("strategy", ["bayes_opt", "diff_evo", "genetic_algorithm"])
def test_a_seed_repeats_a_kernel_tuner_strategy_whatever_ran_before(tmp_path: Path, strategy: str) -> None:
    path = tile_cache(tmp_path / "tiles.json")
    data = load_recording(path)
    first = kt_best_so_far(path, strategy, 3, 30, data)
    kt_best_so_far(path, "random_sample", 8, 30, data)
    again = kt_best_so_far(path, strategy, 3, 30, data)
    other = kt_best_so_far(path, strategy, 4, 30, data)
    assert first == again
    assert first[1] != other[1]
    assert len(first[1]) == 30 and len(set(first[1])) == 30


def test_bayes_opt_repeats_whatever_the_machine_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bayes_opt decides when to refit its model by timing itself against the evaluations; 30 ms of extra
    wall time per evaluation (a loaded machine) must not change what a seeded run evaluates."""
    import time

    from kernel_tuner.strategies import bayes_opt

    path = tile_cache(tmp_path / "tiles.json")
    data = load_recording(path)
    first = kt_best_so_far(path, "bayes_opt", 5, 40, data)
    evaluate = bayes_opt.BayesianOptimization.evaluate_objective_function

    def slow(self, param_config):
        time.sleep(0.03)
        return evaluate(self, param_config)

    monkeypatch.setattr(bayes_opt.BayesianOptimization, "evaluate_objective_function", slow)
    assert kt_best_so_far(path, "bayes_opt", 5, 40, data) == first
