"""Research harness: variants of the cotune sampler's method, replayed without Optuna on the hard files.

    python bench/experiments/sampler_variants.py default rf 'default[xi=0.0]' [--budget 50] [--seeds 20]
        [--out bench/experiments/results/sampler_variants.json]

It drives ``CandidateSampler``'s own proposal logic directly (random starts, then expected improvement with
the local phase), so the default variant makes exactly the picks the real sampler makes in ``cotune
replay``, minus Optuna's bookkeeping; the variants change one part of the method each. It reports, per file,
the median best/optimum after ``--budget`` evaluations and how many runs reached the optimum itself, which
is what the quarter-budget target needs (at least half the seeds at the optimum after 50 evaluations).

Variants: ``default``; ``default[option=value,...]`` for sampler settings; ``restarts`` (short for
``default[gp_restarts=5]``: 5 more starting points for the GP's hyperparameter fit); ``maximin``
(space-filling instead of random starts); ``pairs`` (the log2 sum of every pair of numeric params as extra
inputs); ``log`` (log2 instead of rank encoding for numeric params); ``rank+log`` (both); ``top3``,
``top5`` (the union of the best 3 or 5 configs' neighbourhoods in the local phase); ``rf``,
``extra-trees`` (a forest of 50 trees instead of the GP, uncertainty from the trees' spread); ``gp/rf``
(the two models take turns); ``crossover1``, ``crossover2``, ``crossover4`` (the local phase also offers
every config between the incumbent and each of the next 1, 2 or 4 best, param by param); ``adjacent2``
(the local phase also offers every move of two params by one step each); ``lcb0.5``,
``lcb1``, ``lcb2`` (the lowest confidence bound, mean minus 0.5, 1 or 2 standard deviations, instead of
expected improvement, for every pick); ``lcb-local1``, ``lcb-global1`` (the bound for the local or the
global picks only, expected improvement for the others); ``ei/lcb1`` (the bound and expected improvement
take turns); ``thompson`` (one draw per config from the GP's marginal posterior, the lowest wins);
``incumbent`` (the local phase walks the incumbent's neighbourhood only, global once it is all measured: the
default before 2026-11-24, ``default[local_top=1]``); ``elite3``, ``elite5``, ``elite10``
(``default[local_top=k]``: then the neighbourhood of the next best of the k best that has unmeasured
neighbours); ``plane2``, ``plane3`` (the local phase also offers every change of two of the 2 or 3 params
with the shortest fitted length scales); ``randomwalk`` (local picks in random order, global ones as
usual); ``additive``, ``additive0.1``, ``additive10`` (the GP models the residual of a ridge regression,
α = 1, 0.1 or 10, on one-hot params); ``pattern`` (after an improvement that changed one param, the next
value the same way along it is measured first); ``pi`` (local picks by probability of improvement);
``localgp`` (local picks from a GP fitted to the configs within two params of the incumbent);
``patient1``, ``patient2``, ``patient4`` (once a neighbour beats the walk's centre, 1, 2 or 4 more of the
centre's neighbours are measured before the walk moves to the best). In the
result files written before 2026-11-24,
``default`` is what ``incumbent`` is now, and the elite runs broke ties between equal times by config index
rather than by measurement order.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import datetime as dt
import itertools
import json
import shlex
import statistics
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cotune.tuner.search.candidate_sampler as cs
import numpy as np
from cotune.tuner.search.replay import load_recording

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the bench/ folder: its maintained benchmarks
from search_efficiency import _parse_strategy, machine  # bench/ is on sys.path when run as a script

HARD_FILES = (
    "convolution_RTX_3090.json.gz",
    "convolution_milo_A100.json.gz",
    "convolution_milo_A4000.json.gz",
    "convolution_milo_MI250X.json.gz",
    "dedispersion_milo_A4000.json.gz",
    "gemm_RTX_2080_Ti.json.gz",
    "gemm_RTX_3090.json.gz",
)


class Variant(cs.CandidateSampler):
    """The default method; subclasses replace one part of it."""

    def first_pick(self, free: np.ndarray, observed: list) -> int:
        return int(self._rng.choice(free))

    def next_pick(self, observed: list, free: np.ndarray) -> int:
        return self._best_expected_improvement(observed, free)

    def picks(self, told: list, budget: int) -> Iterator[int]:
        """The search's picks in order, each config told its value in ``told`` (None: it failed): random
        starts, then the method's picks, as the sampler makes them in a replay."""
        taken = np.zeros(len(told), dtype=bool)
        observed: list[tuple[int, float | None]] = []
        for _ in range(min(budget, len(told))):
            free = np.flatnonzero(~taken)
            measured = sum(v is not None for _, v in observed)
            if measured < max(2, self._n_startup):
                pick = self.first_pick(free, observed)
            else:
                pick = self.next_pick(observed, free)
            taken[pick] = True
            observed.append((pick, told[pick]))
            yield pick

    def steps(self) -> np.ndarray:
        """Each config's values as their positions among the param's sorted values (one row per config)."""
        if not hasattr(self, "_steps"):
            columns = []
            for j in range(len(self._params)):
                rank = cs._rank_encoding([q[j] for q in self._points])
                span = max(len(rank) - 1, 1)
                columns.append([round(rank[q[j]] * span) for q in self._points])
            self._steps = np.array(columns, dtype=int).T
        return self._steps


class Maximin(Variant):
    def first_pick(self, free, observed):
        if not observed:
            return super().first_pick(free, observed)
        pool = self._rng.choice(free, min(500, free.size), replace=False)
        seen = self._X[[i for i, _ in observed]]
        distance = ((self._X[pool][:, None, :] - seen[None]) ** 2).sum(-1).min(1)
        return int(pool[int(np.argmax(distance))])


class Model(Variant):
    """The default pick with a forest instead of the GP: its trees' mean and spread feed expected improvement."""

    kind = "rf"

    def next_pick(self, observed, free):
        kind = self.kind if self.kind != "gp/rf" else ("gp" if len(observed) % 2 == 0 else "rf")
        if kind == "gp":
            return super().next_pick(observed, free)
        from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

        ys = self._targets(observed)
        forest = (ExtraTreesRegressor if kind == "extra-trees" else RandomForestRegressor)(
            n_estimators=50, max_features=0.8, bootstrap=True, random_state=len(observed) + 1000 * (self._seed or 0)
        ).fit(self._X[[i for i, _ in observed]], ys)
        pool = self._pool(observed, free)
        trees = np.stack([t.predict(self._X[pool]) for t in forest.estimators_])
        best = ys[[v is not None for _, v in observed]].min()
        return int(pool[int(np.argmax(cs._expected_improvement(trees.mean(0), trees.std(0), best, self._xi)))])


class TopK(Variant):
    """Local phase over the union of the k best configs' neighbourhoods."""

    k = 3

    def _pool(self, observed, free):
        if self._local and len(observed) >= self._local_after and self._rng.random() < self._local:
            best = [i for _, i in sorted((v, i) for i, v in observed if v is not None)[: self.k]]
            near = np.unique(np.concatenate([free[(self._raw[free] != self._raw[i]).sum(axis=1) <= 1] for i in best]))
            if near.size:
                return near
        return free


class Crossover(Variant):
    """Local phase over the incumbent's neighbours plus the configs between it and each of the next k best
    (every param taken from one of the two): moves that change several params at once, towards where
    other good configs lie, as a genetic algorithm's crossover does."""

    k = 1

    def _pool(self, observed, free):
        if self._local and len(observed) >= self._local_after and self._rng.random() < self._local:
            best = [i for _, i in sorted((v, i) for i, v in observed if v is not None)[: self.k + 1]]
            incumbent = self._raw[best[0]]
            near = (self._raw[free] != incumbent).sum(axis=1) <= 1
            for other in (self._raw[i] for i in best[1:]):
                near |= ((self._raw[free] == incumbent) | (self._raw[free] == other)).all(axis=1)
            if near.any():
                return free[near]
        return free


class Adjacent2(Variant):
    """Local phase over the incumbent's one-param neighbours plus the configs that move two params one step
    each (to the next smaller or larger value): coupled moves such as a block size's x and y together,
    without the whole two-param neighbourhood that ``radius=2`` opens."""

    def _pool(self, observed, free):
        if self._local and len(observed) >= self._local_after and self._rng.random() < self._local:
            steps = self.steps()
            incumbent = observed[int(np.argmin([v if v is not None else np.inf for _, v in observed]))][0]
            differs = steps[free] != steps[incumbent]
            count = differs.sum(axis=1)
            adjacent = (np.abs(steps[free] - steps[incumbent]) <= 1).all(axis=1)
            near = free[(count <= 1) | ((count == 2) & adjacent)]
            if near.size:
                return near
        return free


class Plane(Variant):
    """Local phase over the incumbent's one-param neighbours plus every config that changes two of its
    ``k`` most relevant params at once (shortest fitted length scales): the coupled moves a block size's x
    and y need, limited to the params the model says matter, instead of the whole radius-2 neighbourhood."""

    k = 2

    def _pool(self, observed, free):
        if self._local and len(observed) >= self._local_after and self._rng.random() < self._local:
            owner = []
            for j in range(len(self._params)):
                values = [q[j] for q in self._points]
                owner.append(j)
                if cs._alignment_encoding(values) is not None:
                    owner.append(j)
            scales = np.atleast_1d(self._kernel.k1.k2.length_scale)[: len(owner)]
            relevance = np.full(len(self._params), np.inf)
            for column, j in enumerate(owner):
                relevance[j] = min(relevance[j], scales[column])
            top = np.argsort(relevance)[: self.k]
            ranked = sorted((v, n) for n, (_, v) in enumerate(observed) if v is not None)
            for _, n in ranked[: self._local_top]:
                differs = self._raw[free] != self._raw[observed[n][0]]
                count = differs.sum(axis=1)
                inside = differs[:, top].sum(axis=1) == count
                near = free[(count <= 1) | ((count == 2) & inside)]
                if near.size:
                    return near
        return free


class RandomWalk(Variant):
    """The local phase in random order: the same pool, a uniform pick from it instead of expected
    improvement (global picks keep it), to see what the model's order is worth inside the neighbourhood."""

    def _best_expected_improvement(self, observed, free):
        pool = self._pool(observed, free)
        if pool.size < free.size:
            return int(self._rng.choice(pool))
        return super()._best_expected_improvement(observed, free)


class Additive(Variant):
    """The GP on top of an additive mean: a ridge regression on one-hot params (each value's main effect,
    learned from every measurement whatever the other params) models log time first, the GP the rest, so
    a neighbour's predicted change is its param value's effect measured anywhere in the space."""

    alpha = 1.0

    def _best_expected_improvement(self, observed, free):
        from sklearn.linear_model import Ridge

        if not hasattr(self, "_onehot"):
            blocks = []
            for j in range(len(self._params)):
                column = self._raw[:, j]
                levels = list(dict.fromkeys(column))
                blocks.append(np.array([[v == level for level in levels] for v in column], dtype=float))
            self._onehot = np.hstack(blocks)
        ys = self._targets(observed)
        rows = [i for i, _ in observed]
        ridge = Ridge(alpha=self.alpha).fit(self._onehot[rows], ys)
        residual = ys - ridge.predict(self._onehot[rows])
        gp = self._fit(observed, residual)
        pool = self._pool(observed, free)
        mu, sigma = gp.predict(self._X[pool], return_std=True)
        mu = mu + ridge.predict(self._onehot[pool])
        best = ys[[v is not None for _, v in observed]].min()
        return int(pool[int(np.argmax(cs._expected_improvement(mu, sigma, best, self._xi)))])


class Pattern(Variant):
    """A pattern move before anything else: when the last improvement changed one param, the config one
    step further the same way along that param (its next value in rank order) is measured next, as a
    Hooke-Jeeves pattern search does. Otherwise the default pick."""

    def next_pick(self, observed, free):
        if len(observed) >= self._local_after:
            steps = self.steps()
            if not hasattr(self, "_by_steps"):
                self._by_steps = {tuple(row): i for i, row in enumerate(steps)}
            incumbents, best = [], np.inf
            for i, v in observed:
                if v is not None and v < best:
                    best = v
                    incumbents.append(i)
            if len(incumbents) >= 2:
                a, b = steps[incumbents[-2]], steps[incumbents[-1]]
                moved = np.flatnonzero(a != b)
                if moved.size == 1:
                    target = b.copy()
                    target[moved[0]] += np.sign(b[moved[0]] - a[moved[0]])
                    pick = self._by_steps.get(tuple(target))
                    if pick is not None and pick in set(free.tolist()):
                        return int(pick)
        return super().next_pick(observed, free)


class LocalScore(Variant):
    """Local picks scored for a walk's step rather than for the largest gain: ``pi`` takes the neighbour
    most likely to be faster than the incumbent (probability of improvement), which a first-improvement
    walk needs; ``localgp`` keeps expected improvement but fits the GP to the measured configs within two
    params of the incumbent only (at least 8 of them), whose interactions a global fit averages away."""

    score = "pi"

    def _best_expected_improvement(self, observed, free):
        pool = self._pool(observed, free)
        if pool.size == free.size:
            return super()._best_expected_improvement(observed, free)
        ys = self._targets(observed)
        ok = [v is not None for _, v in observed]
        best = ys[ok].min()
        if self.score == "pi":
            gp = self._fit(observed, ys)
            mu, sigma = gp.predict(self._X[pool], return_std=True)
            return int(pool[int(np.argmax(cs._norm_cdf((best - mu - self._xi) / np.maximum(sigma, 1e-9))))])
        incumbent = self._raw[observed[int(np.argmin(np.where(ok, ys, np.inf)))][0]]
        rows = [n for n, (i, _) in enumerate(observed) if (self._raw[i] != incumbent).sum() <= 2]
        if len(rows) < 8:
            gp = self._fit(observed, ys)
        else:
            gp = cs._fit_gp(self._X[[observed[n][0] for n in rows]], ys[rows], self._seed)
        mu, sigma = gp.predict(self._X[pool], return_std=True)
        return int(pool[int(np.argmax(cs._expected_improvement(mu, sigma, best, self._xi)))])


class Patient(Variant):
    """A walk closer to steepest descent: once a neighbour of the walk's centre beats it, ``m`` more of the
    centre's neighbours (by expected improvement) are measured before the walk moves to the best config,
    so it steps to the better of several improving neighbours rather than to the first."""

    m = 2

    def _pool(self, observed, free):
        if not (self._local and len(observed) >= self._local_after and self._rng.random() < self._local):
            return free
        values = [v if v is not None else np.inf for _, v in observed]
        incumbent = observed[int(np.argmin(values))][0]
        centre = getattr(self, "_centre", None)
        if centre is None or centre == incumbent:
            self._centre, self._extra = incumbent, 0
        elif self._extra >= self.m:  # improved on, and m more neighbours measured: step
            self._centre, self._extra = incumbent, 0
        else:
            self._extra += 1
        near = free[(self._raw[free] != self._raw[self._centre]).sum(axis=1) <= 1]
        if near.size:
            return near
        self._centre = incumbent
        return super()._pool(observed, free)


class Acquisition(Variant):
    """The default pool and model with another score than expected improvement."""

    score = "lcb"  # lcb, lcb-local, lcb-global, ei/lcb or thompson
    beta = 1.0

    def _best_expected_improvement(self, observed, free):
        ys = self._targets(observed)
        gp = self._fit(observed, ys)
        pool = self._pool(observed, free)
        local = pool.size < free.size
        mu, sigma = gp.predict(self._X[pool], return_std=True)
        if self.score == "thompson":
            value = -(mu + sigma * self._rng.standard_normal(mu.size))
        elif {"lcb": True, "lcb-local": local, "lcb-global": not local, "ei/lcb": len(observed) % 2 == 1}[self.score]:
            value = -(mu - self.beta * sigma)
        else:
            best = ys[[v is not None for _, v in observed]].min()
            value = cs._expected_improvement(mu, sigma, best, self._xi)
        return int(pool[int(np.argmax(value))])


def _encode(sampler: Variant, mode: str) -> None:
    """Re-encode the inputs: "pairs" adds log2 sums of numeric pairs, "log"/"rank+log" change the ranks."""
    numeric = {}
    for j in range(len(sampler._params)):
        values = {p[j] for p in sampler._points}
        if len(values) >= 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
            numeric[j] = np.log2(np.array([p[j] for p in sampler._points], dtype=float))
    scaled = {j: (c - c.min()) / (c.max() - c.min()) for j, c in numeric.items()}
    if mode == "pairs":
        extra = [numeric[a] + numeric[b] for a, b in itertools.combinations(numeric, 2)]
        extra = [(c - c.min()) / (c.max() - c.min()) for c in extra if c.max() > c.min()]
        if extra:
            sampler._X = np.hstack([sampler._X, np.array(extra).T])
        return
    columns = []
    for j in range(len(sampler._params)):
        values = [p[j] for p in sampler._points]
        rank = cs._rank_encoding(values)
        if j not in scaled or mode == "rank+log":
            columns.append([rank[v] for v in values])
        if j in scaled:
            columns.append(scaled[j])
        align = cs._alignment_encoding(values)
        if align is not None:
            columns.append(align)
    sampler._X = np.array(columns, dtype=float).T


ALIASES = {"restarts": "default[gp_restarts=5]", "incumbent": "default[local_top=1]"}
ALIASES |= {f"elite{k}": f"default[local_top={k}]" for k in (3, 5, 10)}


def make(variant: str, candidates, distributions, seed) -> Variant:
    name, options = _parse_strategy(ALIASES.get(variant, variant))
    classes = {"default": Variant, "maximin": Maximin, "top3": TopK, "top5": TopK}
    classes |= dict.fromkeys(("crossover1", "crossover2", "crossover4"), Crossover)
    classes["adjacent2"] = Adjacent2
    classes["randomwalk"] = RandomWalk
    classes["pattern"] = Pattern
    classes |= dict.fromkeys(("patient1", "patient2", "patient4"), Patient)
    classes |= dict.fromkeys(("pi", "localgp"), LocalScore)
    classes |= dict.fromkeys(("additive", "additive0.1", "additive10"), Additive)
    classes |= dict.fromkeys(("plane2", "plane3"), Plane)
    classes |= dict.fromkeys(("rf", "extra-trees", "gp/rf"), Model)
    classes |= dict.fromkeys(("pairs", "log", "rank+log"), Variant)
    classes |= dict.fromkeys(
        ("lcb0.5", "lcb1", "lcb2", "lcb-local1", "lcb-global1", "ei/lcb1", "thompson"), Acquisition
    )
    if name not in classes:
        raise SystemExit(f"unknown variant {name!r}; known: {', '.join(classes)}")
    sampler = classes[name](candidates, distributions, seed=seed, **options)
    if name in ("top3", "top5"):
        sampler.k = int(name[3:])
    if name.startswith("patient"):
        sampler.m = int(name.removeprefix("patient"))
    if classes[name] is LocalScore:
        sampler.score = name
    if name.startswith("additive"):
        sampler.alpha = float(name.removeprefix("additive") or 1.0)
    if name.startswith("plane"):
        sampler.k = int(name.removeprefix("plane"))
    if name.startswith("crossover"):
        sampler.k = int(name.removeprefix("crossover"))
    if classes[name] is Model:
        sampler.kind = name
    if name in ("pairs", "log", "rank+log"):
        _encode(sampler, name)
    if classes[name] is Acquisition:
        sampler.score = name.rstrip("0123456789.") or name
        sampler.beta = float(name.removeprefix(sampler.score) or 0)
    return sampler


def one(args: tuple[str, str, int, int]) -> dict:
    path, variant, seed, budget = args
    data = load_recording(Path(path))
    sampler = make(variant, data.candidates(), data.distributions(), seed)
    times = [data.records[p].time_ms for p in sampler._points]
    best = min(times[i] for i in sampler.picks(times, budget) if times[i] is not None)
    return {"file": data.name, "variant": variant, "seed": seed, "ratio": best / data.optimum}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--data", type=Path, default=Path("../shared/bench/replay"))
    ap.add_argument("--files", nargs="*", default=list(HARD_FILES))
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("bench/experiments/results/sampler_variants.json"))
    args = ap.parse_args()
    jobs = [
        (str(args.data / f), v, s, args.budget) for v in args.variants for f in args.files for s in range(args.seeds)
    ]
    started = dt.datetime.now(dt.UTC)
    with ProcessPoolExecutor() as pool:
        rows = list(pool.map(one, jobs, chunksize=1))
    summary = []
    for variant in args.variants:
        line = {"variant": variant, "at_optimum": 0, "files": {}}
        for f in args.files:
            ratios = [r["ratio"] for r in rows if r["variant"] == variant and r["file"] == f]
            hits = sum(r <= 1.0 for r in ratios)
            line["files"][f] = {"median": round(statistics.median(ratios), 4), "at_optimum": hits}
            line["at_optimum"] += hits
        summary.append(line)
        cells = " | ".join(f"{v['median']:.3f} ({v['at_optimum']})" for v in line["files"].values())
        print(f"| {variant} | {cells} | {line['at_optimum']}/{len(args.files) * args.seeds} |", flush=True)
    save(args.out, started, budget=args.budget, seeds=args.seeds, summary=summary, runs=rows)


def save(out: Path, started: dt.datetime, **fields: object) -> None:
    """A result file: the command, machine, date and duration of this run, then ``fields``."""
    result = {
        "command": "python " + shlex.join(sys.argv),
        "machine": machine(),
        "date": started.date().isoformat(),
        "seconds": round((dt.datetime.now(dt.UTC) - started).total_seconds()),
    }
    out.write_text(json.dumps(result | fields, indent=1))


if __name__ == "__main__":
    main()
