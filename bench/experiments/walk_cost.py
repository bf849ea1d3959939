"""Where a search's evaluations go on the hard files: reaching the optimum's basin, or walking inside it.

    python bench/experiments/walk_cost.py [VARIANT] [--budget 200] [--seeds 20] \
        [--out bench/experiments/results/walk_cost.json]

The optimum's basin is the set of configs from which steepest descent over one-param neighbours (move to the
fastest neighbour while it is faster) ends at the optimum. For each run of a
``bench/experiments/sampler_variants.py`` variant (the default: the sampler's own picks) it records the
evaluation at which the best config so far first lies in that basin, and the one at which it is the optimum;
the difference is what the walk inside the basin cost. For each file it also gives the basin's share of the
space, the median one-param neighbourhood and the median number of steepest-descent steps from a basin config
to the optimum (300 configs drawn with seed 0), which is what a walk that always chose the right neighbour
would spend. """

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import datetime as dt
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from cotune.tuner.search.replay import load_recording
from sampler_variants import HARD_FILES, make, save  # bench/ is on sys.path when run as a script


def neighbours(points: list[tuple]) -> list[list[int]]:
    """Each config's one-param neighbours (same values in every param but one), by index."""
    out: list[list[int]] = [[] for _ in points]
    for j in range(len(points[0])):
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(points):
            groups.setdefault(p[:j] + p[j + 1 :], []).append(i)
        for group in groups.values():
            for i in group:
                out[i].extend(x for x in group if x != i)
    return out


def descent(times: np.ndarray, near: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """For each config, where steepest descent ends and in how many steps."""
    step = np.arange(len(times))
    for i, group in enumerate(near):
        if group:
            b = min(group, key=lambda x: times[x])
            if times[b] < times[i]:
                step[i] = b
    end, steps = np.arange(len(times)), np.zeros(len(times), dtype=int)
    for i in range(len(times)):
        j = i
        while step[j] != j:
            j = step[j]
            steps[i] += 1
        end[i] = j
    return end, steps


def one(args: tuple[str, str, int, int]) -> dict:
    path, variant, seed, budget = args
    data = load_recording(Path(path))
    sampler = make(variant, data.candidates(), data.distributions(), seed)
    times = [data.records[p].time_ms for p in sampler._points]
    t = np.array([np.inf if x is None else x for x in times])
    end, _ = descent(t, neighbours(sampler._points))
    optimum = int(np.argmin(t))
    best: int | None = None
    in_basin = hit = None
    for evaluation, pick in enumerate(sampler.picks(times, budget), 1):
        if times[pick] is not None and (best is None or t[pick] < t[best]):
            best = pick
        if in_basin is None and best is not None and end[best] == optimum:
            in_basin = evaluation
        if best == optimum:
            hit = evaluation
            break
    return {"file": data.name, "seed": seed, "best_in_basin_at": in_basin, "optimum_at": hit}


def landscape(path: Path) -> dict:
    data = load_recording(path)
    points = list(data.records)
    t = np.array([np.inf if data.records[p].time_ms is None else data.records[p].time_ms for p in points])
    near = neighbours(points)
    end, steps = descent(t, near)
    optimum = int(np.argmin(t))
    basin = np.flatnonzero(end == optimum)
    drawn = np.random.default_rng(0).choice(basin, min(300, basin.size), replace=False)
    return {
        "basin_share": round(float(basin.size / len(points)), 4),
        "neighbourhood_median": statistics.median(len(g) for g in near),
        "descent_steps_median": statistics.median(int(steps[i]) for i in drawn),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variant", nargs="?", default="default")
    ap.add_argument("--data", type=Path, default=Path("../shared/bench/replay"))
    ap.add_argument("--files", nargs="*", default=list(HARD_FILES))
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("bench/experiments/results/walk_cost.json"))
    args = ap.parse_args()
    started = dt.datetime.now(dt.UTC)
    jobs = [(str(args.data / f), args.variant, s, args.budget) for f in args.files for s in range(args.seeds)]
    with ProcessPoolExecutor() as pool:
        rows = list(pool.map(one, jobs, chunksize=1))
        shapes = dict(zip(args.files, pool.map(landscape, [args.data / f for f in args.files]), strict=True))
    summary = {}
    print(
        "| file | basin share | neighbourhood | descent steps | best in basin at | walk to the optimum | optimum at |"
    )
    print("|---|---|---|---|---|---|---|")
    for f in args.files:
        runs = [r for r in rows if r["file"] == f]
        never = args.budget + 1  # counts a run that never got there as later than any that did
        entered = statistics.median(r["best_in_basin_at"] or never for r in runs)
        walks = [r["optimum_at"] - r["best_in_basin_at"] for r in runs if r["optimum_at"] and r["best_in_basin_at"]]
        walk = statistics.median(walks) if walks else None
        hit = statistics.median(r["optimum_at"] or never for r in runs)
        summary[f] = shapes[f] | {"best_in_basin_at_median": entered, "walk_median": walk, "optimum_at_median": hit}
        s = shapes[f]
        print(
            f"| {f.removesuffix('.json.gz')} | {s['basin_share']:.1%} | {s['neighbourhood_median']} | "
            f"{s['descent_steps_median']} | {entered} | {walk} ({len(walks)} runs) | {hit} |",
            flush=True,
        )
    save(args.out, started, variant=args.variant, budget=args.budget, seeds=args.seeds, summary=summary, runs=rows)


if __name__ == "__main__":
    main()
