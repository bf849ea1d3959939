"""Search efficiency on recorded brute-force data: files x strategies x seeds, a fixed budget each.

    python bench/search_efficiency.py [--data ../shared/bench/replay] [--strategies tpe random]
        [--seeds 20] [--budget 200] [--out bench/results/search_efficiency.json]

Reports per file and strategy: median evaluations to within 2 % of the optimum, and the mean of
best/optimum after 25, 50, 100 and 200 evaluations. Strategies are cotune's sampler names.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tuner.replay import load_kernel_tuner_cache, replay

CHECKPOINTS = (25, 50, 100, 200)


def one(args: tuple[str, str, int, int]) -> dict:
    path, strategy, seed, budget = args
    data = load_kernel_tuner_cache(Path(path))
    r = replay(data, sampler=strategy, budget=budget, seed=seed)
    ratio = {}
    for n in CHECKPOINTS:
        best = r.best_so_far[min(n, len(r.best_so_far)) - 1]
        ratio[str(n)] = best / r.optimum if best is not None else None
    return {
        "file": data.name,
        "strategy": strategy,
        "seed": seed,
        "to_2pct": r.evaluations_to_within(0.02),
        "ratio": ratio,
    }


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for key in sorted({(r["file"], r["strategy"]) for r in rows}):
        group = [r for r in rows if (r["file"], r["strategy"]) == key]
        reach = [r["to_2pct"] if r["to_2pct"] is not None else float("inf") for r in group]
        median = statistics.median(reach)
        entry = {
            "file": key[0],
            "strategy": key[1],
            "seeds": len(group),
            # null: the median run did not get within 2 % inside the budget
            "median_evals_to_2pct": None if median == float("inf") else median,
        }
        for n in CHECKPOINTS:
            vals = [r["ratio"][str(n)] for r in group if r["ratio"][str(n)] is not None]
            entry[f"mean_best_over_opt@{n}"] = round(statistics.mean(vals), 4) if vals else None
        out.append(entry)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/bench/replay"))
    ap.add_argument("--strategies", nargs="+", default=["random", "tpe"])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--files", nargs="*", help="file names under --data (default: every KT cache)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/search_efficiency.json"))
    args = ap.parse_args()
    names = args.files or sorted(p.name for p in args.data.glob("*.json*") if "_T4" not in p.name)
    jobs = [
        (str(args.data / f), s, seed, args.budget) for f in names for s in args.strategies for seed in range(args.seeds)
    ]
    with ProcessPoolExecutor() as pool:
        rows = list(pool.map(one, jobs))
    summary = summarise(rows)
    for s in summary:
        print(json.dumps(s))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "bench/search_efficiency.py",
                "command": "python bench/search_efficiency.py "
                + " ".join(
                    ["--strategies", *args.strategies, "--seeds", str(args.seeds), "--budget", str(args.budget)]
                    + (["--files", *args.files] if args.files else [])
                ),
                "date": dt.date.today().isoformat(),
                "machine": {
                    "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(),
                },
                "summary": summary,
                "runs": rows,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
