"""Research diagnostic: how well can a model trained on some configs of a recorded cache point at its optimum?

    python bench/experiments/surrogate_screen.py [--train 60 200] [--draws 4] \
        [--out bench/experiments/results/surrogate_screen.json]

For each hard file, it draws ``--draws`` training sets of N configs (half at random, half from the fastest
20 %, as a search's measurements lean towards good configs; the optimum itself is never in it), fits each
model to their log times and ranks the other configs by predicted time. It reports the optimum's rank
(how many unmeasured configs the model puts before it) and the best true time among the model's top 10, as
a ratio to the optimum. If no model puts the optimum near the top from the data a search has after 50
evaluations, a better surrogate alone cannot meet the quarter-budget target; knowledge from outside the
file (priors, related studies) has to.

Models: ``gp`` (the cotune sampler's Gaussian process and encoding), ``gp+onehot`` (the same with a one-hot
column per param value), ``rf`` (random forest, 100 trees), ``hgb`` (histogram gradient boosting),
``ridge-onehot`` (linear in one-hot params), ``ridge-pairs`` (linear in one-hot params and one-hot param
pairs: a second-order model of coupled params).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import datetime as dt
import itertools
import json
import statistics
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cotune.tuner.search.candidate_sampler as cs
import numpy as np
from cotune.tuner.search.replay import load_recording

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the bench/ folder: its maintained benchmarks
from sampler_variants import HARD_FILES  # bench/ is on sys.path when run as a script
from search_efficiency import machine

MODELS = ("gp", "gp+onehot", "rf", "hgb", "ridge-onehot", "ridge-pairs")


def _inputs(sampler: cs.CandidateSampler) -> dict[str, np.ndarray]:
    from sklearn.preprocessing import OneHotEncoder

    codes = [np.unique(sampler._raw[:, j].astype(str), return_inverse=True)[1] for j in range(sampler._raw.shape[1])]
    onehot = OneHotEncoder().fit_transform(np.array(codes).T).toarray()
    pairs = [
        OneHotEncoder().fit_transform((a * (b.max() + 1) + b)[:, None]).toarray()
        for a, b in itertools.combinations(codes, 2)
    ]
    return {
        "gp": sampler._X,
        "gp+onehot": np.hstack([sampler._X, 0.5 * onehot]),
        "rf": sampler._X,
        "hgb": sampler._X,
        "ridge-onehot": onehot,
        "ridge-pairs": np.hstack([onehot, *pairs]),
    }


def _fit(model: str, X: np.ndarray, y: np.ndarray):
    from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import RidgeCV

    if model.startswith("gp"):
        return cs._fit_gp(X, y, 0)
    if model == "rf":
        return RandomForestRegressor(100, max_features=0.8, random_state=0).fit(X, y)
    if model == "hgb":
        return HistGradientBoostingRegressor(max_iter=200, min_samples_leaf=5, random_state=0).fit(X, y)
    return RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(X, y)


def one(args: tuple[str, int, int]) -> list[dict]:
    path, n, draw = args
    data = load_recording(Path(path))
    sampler = cs.CandidateSampler(data.candidates(), data.distributions())
    times = np.array([np.nan if (t := data.records[p].time_ms) is None else t for p in sampler._points])
    ok = np.flatnonzero(~np.isnan(times))
    optimum = ok[np.argmin(times[ok])]
    rng = np.random.default_rng(draw)
    good = ok[times[ok] < np.quantile(times[ok], 0.2)]
    train = np.unique(np.concatenate([rng.choice(ok, n // 2, replace=False), rng.choice(good, n // 2, replace=False)]))
    train = train[train != optimum]
    y = np.log(times[train])
    y = (y - y.mean()) / y.std()
    rest = np.setdiff1d(ok, train)
    at = int(np.flatnonzero(rest == optimum)[0])
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model, X in _inputs(sampler).items():
            predicted = _fit(model, X[train], y).predict(X[rest])
            top = rest[np.argsort(predicted)[:10]]
            rows.append(
                {
                    "file": Path(path).name,
                    "train": n,
                    "draw": draw,
                    "model": model,
                    "optimum_rank": int((predicted < predicted[at]).sum()),
                    "unmeasured": int(rest.size),
                    "top10_best_ratio": float(times[top].min() / times[optimum]),
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/bench/replay"))
    ap.add_argument("--files", nargs="*", default=list(HARD_FILES))
    ap.add_argument("--train", type=int, nargs="+", default=[60, 200])
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("bench/experiments/results/surrogate_screen.json"))
    args = ap.parse_args()
    started = dt.datetime.now(dt.UTC)
    jobs = [(str(args.data / f), n, d) for n in args.train for f in args.files for d in range(args.draws)]
    with ProcessPoolExecutor() as pool:
        rows = [r for batch in pool.map(one, jobs, chunksize=1) for r in batch]
    summary = []
    for n in args.train:
        print(f"\ntraining configs: {n}; per model, median rank of the optimum / mean best of the top 10")
        print("| file | " + " | ".join(MODELS) + " |")
        for f in args.files:
            cells = []
            for model in MODELS:
                mine = [r for r in rows if r["train"] == n and r["model"] == model and r["file"] == f]
                rank = statistics.median(r["optimum_rank"] for r in mine)
                best = statistics.mean(r["top10_best_ratio"] for r in mine)
                line = {"file": f, "train": n, "model": model, "median_rank": rank}
                summary.append(line | {"mean_top10_best": round(best, 4)})
                cells.append(f"{rank:.0f} / {best:.3f}")
            print(f"| {f} | " + " | ".join(cells) + " |", flush=True)
    result = {
        "machine": machine(),
        "date": started.date().isoformat(),
        "seconds": round((dt.datetime.now(dt.UTC) - started).total_seconds()),
        "summary": summary,
        "runs": rows,
    }
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
