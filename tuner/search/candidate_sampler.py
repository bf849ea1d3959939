"""cotune's own sampler: Bayesian optimisation over the enumerated feasible configs of a tile space.

Kernel spaces are small, discrete and heavily constrained, so instead of proposing points in a relaxed
continuous space and discarding the infeasible ones, this sampler scores the feasible configs themselves:

- every param is encoded by its rank among its sorted values (so 16 < 32 < 64 are neighbours, as a tile
  size's effect is), scaled to [0, 1];
- a Gaussian process (Matern 5/2, one length scale per param, fitted by scikit-learn) models log time;
  a failed config counts as the worst time seen, so the model learns to stay away from failing regions;
- the next config is the unmeasured, not running, feasible one with the highest expected improvement;
- the first ``n_startup`` of its own picks are drawn at random from the feasible set, on top of any configs
  the study measured first (``enqueue_trial``: another shape's winner, a space's known-good seeds): those
  cluster where another GPU or shape was fast, and a model fitted to them alone ranks the rest of the
  space badly (on the recorded caches, counting them as the start-up cost convolution_milo_A100 its
  optimum within 200 evaluations). Configs already measured, failed or in flight are never proposed again;
- once ``local_after`` configs are measured, half of the proposals (``local``) come from the incumbent's
  neighbourhood: the unmeasured configs that differ from the best one in at most ``radius`` params, still
  ranked by expected improvement. Kernel optima are narrow (on the recorded GPU caches one config is often
  the only one within 2 %), a global model alone reaches their basin but rarely the exact config, and the
  neighbourhood walk finishes the job. When the incumbent's neighbourhood is exhausted, the walk moves to
  the next best of the ``local_top`` best configs that still has unmeasured neighbours (a best-first walk),
  and only when all of theirs are measured is the pick global again. The best measurement can be a lucky
  one, and the way to a better basin can lead through a neighbour of the second best rather than of the
  best; on the H100 Triton matmul M=128 recording, a walk around the incumbent alone reached the optimum
  in 9 of 20 seeds at 200 evaluations (median 1.5 % off), the best-first walk in 17 of 20;
- ``related``: the measured trials of related studies (the same kernel on another GPU or batch size)
  become one more input feature each, their log time per config, so the model learns how far the other
  study's landscape predicts this one. The GP weighs the feature by its fitted length scale, so an
  unhelpful relative costs little, where measuring another study's winners first (``enqueue_trial``)
  can steer the whole search to the wrong basin. Configs the related study did not measure get the
  prediction of a GP fitted to what it did.

Length scales are re-fitted every ``refit_every`` observations and reused in between, which keeps a 200-
evaluation run to seconds. Each setting's effect is measured in the README.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState


def _rank_encoding(values: Sequence[Any]) -> dict[Any, float]:
    distinct = list(dict.fromkeys(values))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct)
    ordered = sorted(distinct) if numeric else sorted(distinct, key=str)
    if len(ordered) == 1:
        return {ordered[0]: 0.0}
    return {v: i / (len(ordered) - 1) for i, v in enumerate(ordered)}


def _alignment_encoding(values: Sequence[Any]) -> list[float] | None:
    """How aligned an integer param is: log2 of its largest power-of-two divisor, capped at 2^8, in [0, 1].

    GPU kernels care whether a block or tile size is a multiple of the warp or wavefront (32, 64), which a
    rank alone cannot express (48 sits between 32 and 64 yet behaves worse than both). None for params
    that are not integers, or have fewer than three values.
    """
    distinct = set(values)
    if len(distinct) < 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in distinct):
        return None
    twos = {v: min((v & -v).bit_length() - 1, 8) / 8 for v in distinct}
    if len(set(twos.values())) < 2:
        return None
    return [twos[v] for v in values]


def _related_feature(
    params: Sequence[str],
    points: Sequence[tuple],
    X: np.ndarray,
    trials: Sequence[tuple[Mapping[str, Any], float | None]],
    seed: int | None,
    max_fit: int = 256,
) -> list[float] | None:
    """A related study's log value of each config, scaled to [0, 1]; None when it tells nothing.

    Failures count as the related study's worst value; configs it did not measure get the mean of a GP
    fitted to (at most ``max_fit`` of) those it did, over the same encoding as this space.
    """
    index = {p: i for i, p in enumerate(points)}
    known: dict[int, float | None] = {}
    for config, value in trials:
        i = index.get(tuple(config.get(p) for p in params))
        if i is not None and (value is None or math.isfinite(value)):
            known[i] = value
    ok = np.array([v for v in known.values() if v is not None], dtype=float)
    if ok.size < 2:
        return None
    transform = _log_scale(ok)
    worst = float(transform(ok).max())
    column = np.full(len(points), np.nan)
    for i, v in known.items():
        column[i] = worst if v is None else float(transform(np.array(v)))
    missing = np.isnan(column)
    if missing.any():
        measured = np.flatnonzero(~missing)
        if measured.size > max_fit:
            measured = np.random.default_rng(seed).choice(measured, max_fit, replace=False)
        gp = _fit_gp(X[measured], column[measured], seed, normalize_y=True)
        column[missing] = gp.predict(X[missing])
    low, high = column.min(), column.max()
    if high - low <= 0:
        return None
    return list((column - low) / (high - low))


def _log_scale(values: np.ndarray) -> Callable[[Any], Any]:
    """The transform onto a log scale for these lower-is-better values, keeping their order: log of times;
    -log of the magnitude of a negated maximised objective (throughput spans orders of magnitude as time
    does); values of mixed sign as they are."""
    if bool(np.all(values > 0)):
        return np.log
    if bool(np.all(values < 0)):
        return lambda a: -np.log(-np.asarray(a, dtype=float))
    return lambda a: a


def _fit_gp(
    X: np.ndarray, y: np.ndarray, seed: int | None, *, kernel: Any = None, normalize_y: bool = False, restarts: int = 0
) -> Any:
    """A GP over ``X``: Matern 5/2 with one length scale per column, plus noise, its hyperparameters fitted
    by marginal likelihood (from ``restarts`` more random starting points too); or, given ``kernel`` (an
    earlier fit's), that kernel reused as it is."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    if kernel is None:
        fresh = ConstantKernel(1.0, (1e-2, 1e2)) * Matern(
            length_scale=np.full(X.shape[1], 0.5), length_scale_bounds=(1e-2, 1e2), nu=2.5
        ) + WhiteKernel(1e-2, (1e-6, 1e0))
        gp = GaussianProcessRegressor(fresh, normalize_y=normalize_y, random_state=seed, n_restarts_optimizer=restarts)
    else:
        gp = GaussianProcessRegressor(kernel, optimizer=None, normalize_y=normalize_y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings at bound length scales are expected here
        gp.fit(X, y)
    return gp


class CandidateSampler(BaseSampler):
    def __init__(
        self,
        candidates: Sequence[Mapping[str, Any]],
        distributions: Mapping[str, BaseDistribution],
        *,
        seed: int | None = None,
        n_startup: int = 10,
        enqueued_in_startup: bool = False,
        refit_every: int = 10,
        gp_restarts: int = 0,
        max_pool: int = 20000,
        xi: float = 0.01,
        align_features: bool = True,
        local: float = 0.5,
        local_after: int = 20,
        radius: int = 1,
        local_top: int = 5,
        related: Sequence[Sequence[tuple[Mapping[str, Any], float | None]]] = (),
    ) -> None:
        """``related``: per related study, its (params, value) pairs, lower is better, None for a failure.
        ``enqueued_in_startup``: count enqueued configs toward the ``n_startup`` random picks (the behaviour
        before 2026-11-24, kept for the benchmark's record)."""
        if not candidates:
            raise ValueError("CandidateSampler needs at least one feasible config")
        if local_top < 1:
            raise ValueError(f"local_top must be at least 1 (the incumbent), got {local_top}")
        self._params = list(distributions)
        self._distributions = dict(distributions)
        self._points = [tuple(c[p] for p in self._params) for c in candidates]
        self._index = {p: i for i, p in enumerate(self._points)}
        columns = []
        for j in range(len(self._params)):
            values = [p[j] for p in self._points]
            rank = _rank_encoding(values)
            columns.append([rank[v] for v in values])
            align = _alignment_encoding(values) if align_features else None
            if align is not None:
                columns.append(align)
        self.related_features = 0  # how many related studies became a model feature
        # Each related study is imputed from the params alone, so its column does not depend on which other
        # related studies came before it.
        encoded = np.array(columns, dtype=float).T
        for trials in related:
            column = _related_feature(self._params, self._points, encoded, trials, seed)
            if column is not None:
                columns.append(column)
                self.related_features += 1
        self._X = np.array(columns, dtype=float).T
        self._rng = np.random.default_rng(seed)
        self._seed = seed
        self._n_startup = n_startup
        self._enqueued_in_startup = enqueued_in_startup
        self._refit_every = refit_every
        self._gp_restarts = gp_restarts
        self._max_pool = max_pool
        self._xi = xi
        self._local = local
        self._local_after = local_after
        self._radius = radius
        self._local_top = local_top
        self._raw = np.array(self._points, dtype=object)
        self._kernel: Any = None
        self._fitted_at = -1

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()

    def reseed(self, seed: int | None) -> None:
        """A new random stream from ``seed``; the fitted model (its kernel, refit every ``refit_every``
        results) stays, as refitting it costs seconds at a few hundred results."""
        self._rng = np.random.default_rng(seed)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._distributions

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        taken = np.zeros(len(self._points), dtype=bool)
        observed: list[tuple[int, float | None]] = []
        own_ok = 0  # successful configs this sampler picked; the others were enqueued
        for t in study._get_trials(deepcopy=False, use_cache=True):
            if t.number == trial.number or set(t.params) != set(self._params):
                continue
            i = self._index.get(tuple(t.params[p] for p in self._params))
            if i is None:
                continue
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                taken[i] = True
            elif t.state is TrialState.FAIL:
                taken[i] = True
                observed.append((i, None))
            elif t.state is TrialState.COMPLETE and t.value is not None:
                taken[i] = True
                value = t.value if study.direction is StudyDirection.MINIMIZE else -t.value
                observed.append((i, value))
                own_ok += self._enqueued_in_startup or "fixed_params" not in t.system_attrs
        free = np.flatnonzero(~taken)
        if free.size == 0:  # everything measured: let the driver see a repeat and stop
            return dict(zip(self._params, self._points[int(self._rng.integers(len(self._points)))], strict=True))
        ok = [v for _, v in observed if v is not None]
        if len(ok) < 2 or own_ok < self._n_startup:
            pick = int(self._rng.choice(free))
        else:
            pick = self._best_expected_improvement(observed, free)
        return dict(zip(self._params, self._points[pick], strict=True))

    def _best_expected_improvement(self, observed: list[tuple[int, float | None]], free: np.ndarray) -> int:
        ys = self._targets(observed)
        gp = self._fit(observed, ys)
        pool = self._pool(observed, free)
        if pool.size > self._max_pool:
            pool = self._rng.choice(pool, self._max_pool, replace=False)
        mu, sigma = gp.predict(self._X[pool], return_std=True)
        best = ys[[v is not None for _, v in observed]].min()
        return int(pool[int(np.argmax(_expected_improvement(mu, sigma, best, self._xi)))])

    def _targets(self, observed: list[tuple[int, float | None]]) -> np.ndarray:
        """The model's targets: values on a log scale (``_log_scale``), a failure as the worst value seen,
        standardised."""
        ok = np.array([v for _, v in observed if v is not None], dtype=float)
        transform = _log_scale(ok)
        worst = float(transform(ok).max())
        y = np.array([transform(v) if v is not None else worst for _, v in observed], dtype=float)
        return (y - y.mean()) / (y.std() or 1.0)

    def _fit(self, observed: list[tuple[int, float | None]], ys: np.ndarray) -> Any:
        refit = self._kernel is None or len(observed) - self._fitted_at >= self._refit_every
        X = self._X[[i for i, _ in observed]]
        gp = _fit_gp(X, ys, self._seed, kernel=None if refit else self._kernel, restarts=self._gp_restarts)
        if refit:
            self._kernel, self._fitted_at = gp.kernel_, len(observed)
        return gp

    def _pool(self, observed: list[tuple[int, float | None]], free: np.ndarray) -> np.ndarray:
        """The configs this pick chooses from: in the local phase (a ``local`` share of picks once
        ``local_after`` are measured) the unmeasured neighbours of the best config that still has some, of
        the ``local_top`` best; otherwise, or when none of those has any, every free one."""
        if self._local and len(observed) >= self._local_after and self._rng.random() < self._local:
            # Equal times go to the earlier measurement, as the incumbent is chosen.
            ranked = sorted((v, n) for n, (_, v) in enumerate(observed) if v is not None)
            for _, n in ranked[: self._local_top]:
                differs = (self._raw[free] != self._raw[observed[n][0]]).sum(axis=1)
                near = free[differs <= self._radius]
                if near.size:
                    return near
        return free

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        # Only reached for params outside the candidate space; draw one of its choices at random.
        choices = getattr(param_distribution, "choices", None)
        if choices is not None:
            return choices[int(self._rng.integers(len(choices)))]
        low, high = param_distribution.low, param_distribution.high  # type: ignore[attr-defined]
        return low + (high - low) * float(self._rng.random())


def _expected_improvement(mu: np.ndarray, sigma: np.ndarray, best: float, xi: float) -> np.ndarray:
    """EI of lower-is-better predictions over ``best``, ``xi`` the margin an improvement must clear."""
    sigma = np.maximum(sigma, 1e-9)
    z = (best - mu - xi) / sigma
    return (best - mu - xi) * _norm_cdf(z) + sigma * _norm_pdf(z)


def _norm_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(z)
