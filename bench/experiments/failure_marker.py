"""What reading older Kernel Tuner caches' failure time as a measurement would cost the search.

    python bench/experiments/failure_marker.py [--seeds 20] [--budget 50] \
        [--out bench/experiments/results/failure_marker.json]

Kernel Tuner releases before the ``CompilationFailedConfig``/``RuntimeFailedConfig`` markers cached a config
that failed to compile or run with time 1e20. ``cotune.tuner.search.replay`` reads that as a failure. This replays the
default sampler (``bench/experiments/sampler_variants.py``'s ``default``) on the shared caches that hold failures, once
with each failure told as a failure and once with it told as a 1e20 ms measurement, and reports the median
best/optimum after ``--budget`` evaluations and the runs that hold the optimum.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import datetime as dt
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cotune.tuner.search.replay import OLD_FAILURE_TIME_MS, load_recording
from sampler_variants import make, save  # bench/ is on sys.path when run as a script

FILES = ("convolution_RTX_3090.json.gz", "pnpoly_RTX_3090.json.gz", "pnpoly_RTX_2080_Ti.json.gz")


def one(args: tuple[str, int, int, bool]) -> dict:
    path, seed, budget, as_time = args
    data = load_recording(Path(path))
    sampler = make("default", data.candidates(), data.distributions(), seed)
    times = [data.records[p].time_ms for p in sampler._points]
    told = [OLD_FAILURE_TIME_MS if t is None and as_time else t for t in times]
    best = min(times[i] for i in sampler.picks(told, budget) if times[i] is not None)
    return {"file": data.name, "seed": seed, "failure_as_time": as_time, "ratio": best / data.optimum}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/bench/replay"))
    ap.add_argument("--files", nargs="*", default=list(FILES))
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("bench/experiments/results/failure_marker.json"))
    args = ap.parse_args()
    started = dt.datetime.now(dt.UTC)
    jobs = [
        (str(args.data / f), seed, args.budget, as_time)
        for f in args.files
        for as_time in (False, True)
        for seed in range(args.seeds)
    ]
    with ProcessPoolExecutor() as pool:
        rows = list(pool.map(one, jobs, chunksize=1))
    summary = []
    print(f"| file | told | median best/optimum @{args.budget} | runs at the optimum | mean |")
    print("|---|---|---|---|---|")
    for f in args.files:
        for as_time in (False, True):
            ratios = [r["ratio"] for r in rows if r["file"] == f and r["failure_as_time"] == as_time]
            line = {
                "file": f,
                "failure_as_time": as_time,
                "median": round(statistics.median(ratios), 4),
                "at_optimum": sum(r <= 1.0 for r in ratios),
                "mean": round(statistics.mean(ratios), 4),
            }
            summary.append(line)
            told = "as a 1e20 ms time" if as_time else "as a failure"
            print(
                f"| {f.removesuffix('.json.gz')} | {told} | {line['median']:.4f} | "
                f"{line['at_optimum']}/{len(ratios)} | {line['mean']:.4f} |",
                flush=True,
            )
    save(args.out, started, budget=args.budget, seeds=args.seeds, summary=summary, runs=rows)


if __name__ == "__main__":
    main()
