"""Kernel Tuner's own strategies replayed on the same caches, for the peer columns of the search benchmark.

``kernel_tuner.tune_cache`` runs a strategy in simulation mode against a brute-force cache (configs absent
from the cache are outside its space, as in cotune's replay). Its result list can revisit configs; the
evaluation sequence here is the distinct configs in the order it first measured them, failures included,
cut at the budget. Kernel Tuner (``pip install kernel-tuner``) is a benchmark-only dependency.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import random
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
from cotune.tuner.search.replay import FAILURE_MARKERS, ReplayData, is_t4, load_recording, read_recording_json
from scipy.stats import qmc

_plain: dict[str, Path] = {}


class _SeededLatinHypercube(qmc.LatinHypercube):
    """scipy's Latin hypercube draws from fresh OS entropy when it is given no generator, and Kernel Tuner
    gives it none (bayes_opt's initial sample, diff_evo's first population via ``Searchspace.get_LHS_sample``).
    Taking its generator from numpy's global state, which ``kt_best_so_far`` seeds, makes those strategies
    repeat with their seed like the others."""

    def __init__(self, d, **kwargs):
        if kwargs.get("rng") is None and kwargs.get("seed") is None:
            kwargs.pop("seed", None)
            kwargs["rng"] = np.random.randint(2**31)
        super().__init__(d, **kwargs)


@contextlib.contextmanager
def _seeded_latin_hypercube():
    from kernel_tuner.strategies import bayes_opt  # before the seeding, like every strategy's module

    saved = qmc.LatinHypercube, bayes_opt.LatinHypercube
    # Searchspace imports the class inside its methods, so the module attribute is what it gets.
    qmc.LatinHypercube = bayes_opt.LatinHypercube = _SeededLatinHypercube
    try:
        yield
    finally:
        qmc.LatinHypercube, bayes_opt.LatinHypercube = saved


class _SimulatedClock:
    """The clock bayes_opt reads, on the simulated time of a tuning run.

    bayes_opt's default method (multi-ultrafast) refits its model only when its last fit took less than a
    fifth of the last round of evaluations, by the wall clock. Replayed evaluations take microseconds, so the
    choice, and every proposal after it, turned on the machine's load: a 30 ms delay per evaluation changed a
    seeded run at evaluation 23. On this clock an evaluation takes its recorded tuning cost and the model's
    own work next to nothing, as on a GPU, where evaluations dominate: the run repeats with its seed."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1e-9  # strictly increasing, so no interval is zero
        return self.now

    def perf_counter_ns(self) -> int:
        return int(self.perf_counter() * 1e9)


@contextlib.contextmanager
def _simulated_clock(data: ReplayData):
    from kernel_tuner.strategies import bayes_opt

    clock = _SimulatedClock()
    evaluate = bayes_opt.BayesianOptimization.evaluate_objective_function

    def charged(self, param_config: tuple) -> float:  # noqa: ANN001 - bayes_opt's own signature
        values = self.denormalize_param_config(self.unprune_param_config(param_config))
        record = data.records.get(tuple(values))
        clock.now += record.cost_s if record is not None else 0.0
        return evaluate(self, param_config)

    saved_time = bayes_opt.time
    bayes_opt.time, bayes_opt.BayesianOptimization.evaluate_objective_function = clock, charged
    try:
        yield
    finally:
        bayes_opt.time, bayes_opt.BayesianOptimization.evaluate_objective_function = saved_time, evaluate


def _kernel_tuner_file(path: Path) -> Path:
    """What ``tune_cache`` can read: plain JSON in its own cache format. A gzip-compressed cache is
    uncompressed; a T4 file or a cotune trial table is written out as a cache of the same recording."""
    if str(path) in _plain:
        return _plain[str(path)]
    out = path
    if path.suffix == ".csv" or is_t4(read_recording_json(path)[0]):
        out = _scratch()
        out.write_text(json.dumps(_as_cache(load_recording(path))))
    elif path.suffix == ".gz":
        out = _scratch()
        with gzip.open(path, "rb") as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    _plain[str(path)] = out
    return out


def _scratch() -> Path:
    with tempfile.NamedTemporaryFile(prefix="cotune-kt-", suffix=".json", delete=False) as tmp:
        return Path(tmp.name)


def _as_cache(data: ReplayData) -> dict:
    """A recording in Kernel Tuner's cache format: a failure keeps its marker when it has one (Kernel Tuner
    leaves a config with any error out of its space), and the tuning cost is charged as compile time."""
    cache = {}
    for point, record in data.records.items():
        failure = record.failure if record.failure in FAILURE_MARKERS else "RuntimeFailedConfig"
        entry = dict(zip(data.keys, point, strict=True))
        entry |= {"time": record.time_ms if record.time_ms is not None else failure}
        entry |= {"compile_time": record.cost_s * 1e3, "verification_time": 0, "benchmark_time": 0}
        cache[",".join(str(v) for v in point)] = entry
    return {
        "device_name": "",
        "kernel_name": data.name,
        "problem_size": [1],
        "tune_params_keys": list(data.keys),
        "tune_params": {k: list(data.values[k]) for k in data.keys},
        "objective": "time",
        "cache": cache,
    }


def kt_best_so_far(
    path: Path, strategy: str, seed: int, budget: int, data: ReplayData
) -> tuple[list[float | None], list[tuple]]:
    """Best time after each distinct evaluation, and the configs evaluated, in order. Each evaluated config's
    time is the one cotune's replay reads from the same file (``data``), so both sides are scored alike:
    a time replay reads as a failure (1e20, zero) never counts as a best. Kernel Tuner refuses a budget
    larger than its space."""
    from kernel_tuner import tune_cache
    from kernel_tuner.interface import strategy_map

    budget = min(budget, len(data.records))
    cache = str(_kernel_tuner_file(path))
    # Kernel Tuner imports a strategy's module on first use, and some of those imports draw from `random`:
    # import it before seeding, or the first run of a strategy in a process would not repeat with its seed.
    strategy_map[strategy].tune  # noqa: B018
    with warnings.catch_warnings(), _seeded_latin_hypercube(), _simulated_clock(data):
        warnings.simplefilter("ignore")
        np.random.seed(seed)
        random.seed(seed)
        results, _ = tune_cache(
            cache,
            strategy=strategy,
            strategy_options={"max_fevals": budget},
            verbose=False,
            quiet=True,
        )
    seen: set[tuple] = set()
    best: float | None = None
    curve: list[float | None] = []
    evaluated: list[tuple] = []
    for r in results:
        point = tuple(r[k] for k in data.keys)
        if point in seen:
            continue
        seen.add(point)
        evaluated.append(point)
        record = data.records.get(point)
        t = record.time_ms if record is not None else None
        if t is not None:
            best = t if best is None else min(best, t)
        curve.append(best)
        if len(curve) == budget:
            break
    return curve, evaluated
