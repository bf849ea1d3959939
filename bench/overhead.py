"""Per-trial cost of the tuning loop itself: Optuna ask/tell, MLflow logging and process isolation.

Runs the ``noop`` kernel (no work) through the real driver and reports wall time per trial, with and
without MLflow, next to the time of one real ``c_matmul`` trial on the same machine.

    python bench/overhead.py [--trials 100] [--out bench/results/overhead.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path

from cotune.tuner.device.profiles import detect
from cotune.tuner.driver import tune_job
from cotune.tuner.spec.job import parse_spec
from cotune.tuner.track.mlflow_tracker import MlflowTracker
from cotune.tuner.track.tracker import NullTracker


def run(kernel: str, problem: str, trials: int, sampler: str, mlflow: bool, work: Path, tag: str) -> dict:
    spec = parse_spec(
        f"name: {tag}\nkernel: {kernel}\nproblems: [{problem}]\nbudget: {{trials: {trials}}}\n"
        f"sampler: {{name: {sampler}, seed: 0}}\ntop_k: 1\n"
        "bench: {warmup: 1, repeats: 5, timeout_s: 60, remeasure_repeats: 5}\n"
    )
    tracker = MlflowTracker(f"sqlite:///{work}/mlflow.db") if mlflow else NullTracker()
    kernel_s: list[float] = []

    def on_progress(p) -> None:
        if p.last.measurement is not None and p.last.duplicate_of is None:
            m = p.last.measurement  # warm-up calls are untimed; count them at the median
            kernel_s.append(sum(m.times_s) + spec.bench.warmup * m.median_s)

    start = time.perf_counter()
    (outcome,) = tune_job(spec, f"sqlite:///{work}/optuna.db", detect(), tracker, on_progress)
    wall = time.perf_counter() - start
    per_trial = wall / outcome.measured
    kernel_per_trial = sum(kernel_s) / len(kernel_s)
    return {
        "kernel": kernel,
        "problem": problem,
        "sampler": sampler,
        "mlflow": mlflow,
        "measured_trials": outcome.measured,
        "wall_s": round(wall, 3),
        "per_trial_ms": round(per_trial * 1e3, 2),
        "kernel_time_per_trial_ms": round(kernel_per_trial * 1e3, 2),
        "untimed_per_trial_ms": round((per_trial - kernel_per_trial) * 1e3, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("bench/results/overhead.json"))
    args = ap.parse_args()
    rows = []
    cases = [
        ("noop", "{sleep_ms: 1}", "random", False),
        ("noop", "{sleep_ms: 1}", "random", True),
        ("noop", "{sleep_ms: 1}", "tpe", True),
        ("c_matmul", "{M: 512, N: 512, K: 512}", "tpe", True),
    ]
    for i, (kernel, problem, sampler, mlflow) in enumerate(cases):
        with tempfile.TemporaryDirectory() as tmp:
            trials = args.trials if kernel == "noop" else min(args.trials, 30)
            row = run(kernel, problem, trials, sampler, mlflow, Path(tmp), f"overhead-{i}")
            print(json.dumps(row))
            rows.append(row)
    result = {
        "benchmark": "bench/overhead.py",
        "command": f"python bench/overhead.py --trials {args.trials}",
        "date": dt.date.today().isoformat(),
        "machine": {"cpu": detect().name, "cores": detect().cores, "python": platform.python_version()},
        "note": "per_trial = job wall time / measured trials (includes study set-up, storage writes, the "
        "top-1 re-measure and MLflow close). untimed = per_trial minus the kernel's own calls (warm-up + "
        "repeats). For noop that is the loop's overhead (ask/tell, isolation round trip, logging); for "
        "c_matmul it also holds the gcc compile, input generation and verification of each candidate.",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
