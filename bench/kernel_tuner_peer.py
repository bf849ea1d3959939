"""Kernel Tuner's own strategies replayed on the same caches, for the peer columns of the search benchmark.

``kernel_tuner.tune_cache`` runs a strategy in simulation mode against a brute-force cache (configs absent
from the cache are outside its space, as in cotune's replay). Its result list can revisit configs; the
evaluation sequence here is the distinct configs in the order it first measured them, failures included,
cut at the budget. Kernel Tuner (``pip install kernel-tuner``) is a benchmark-only dependency.
"""

from __future__ import annotations

import gzip
import random
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

_plain: dict[str, Path] = {}


def _uncompressed(path: Path) -> Path:
    """Kernel Tuner reads plain JSON only."""
    if path.suffix != ".gz":
        return path
    if str(path) not in _plain:
        out = Path(tempfile.mkdtemp(prefix="cotune-kt-")) / path.name.removesuffix(".gz")
        with gzip.open(path, "rb") as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
        _plain[str(path)] = out
    return _plain[str(path)]


def kt_best_so_far(
    path: Path, strategy: str, seed: int, budget: int, keys: tuple[str, ...], size: int
) -> tuple[list[float | None], list[tuple]]:
    """Best time after each distinct evaluation, and the configs evaluated, in order. ``size``: configs in
    the cache; Kernel Tuner refuses a budget larger than its space."""
    from kernel_tuner import tune_cache

    budget = min(budget, size)
    np.random.seed(seed)
    random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results, _ = tune_cache(
            str(_uncompressed(path)),
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
        point = tuple(r[k] for k in keys)
        if point in seen:
            continue
        seen.add(point)
        evaluated.append(point)
        t = r["time"]
        if isinstance(t, (int, float)) and np.isfinite(t):
            best = float(t) if best is None else min(best, float(t))
        curve.append(best)
        if len(curve) == budget:
            break
    return curve, evaluated
