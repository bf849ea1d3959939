"""Warm starts from related studies in the same storage: the winners of the same kernel, precision and
device on other shapes, nearest batch size first, are measured before the sampler's own proposals.

Tile configs transfer well between neighbouring batch sizes (vLLM's tuned tables change every few powers of
two, not at every M), so the first trials of a new batch size start where the previous one ended. The
replay benchmark measured the same idea across GPUs (``+transfer`` in bench/results/search_efficiency*).
"""

from __future__ import annotations

import math
from typing import Any

from tuner.space import SearchSpace
from tuner.types import Config, DeviceProfile, Problem

MAX_PRIORS = 3


def neighbour_winners(
    storage: Any, space: SearchSpace, problem: Problem, device: DeviceProfile, batch_dim: str
) -> list[Config]:
    """Best configs of finished studies of this kernel, dtype and device on other shapes that are feasible
    here, ordered by how close their shape is (batch dim on a log scale; other dims must match first)."""
    import optuna

    ranked: list[tuple[tuple[int, float], Config]] = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        attrs = s.user_attrs
        other, best = attrs.get("problem"), attrs.get("best")
        if not other or not best or attrs.get("device", {}).get("name") != device.name:
            continue
        if other["kernel"] != problem.kernel or other["dtype"] != problem.dtype.value:
            continue
        dims = problem.dims
        if other["shape"] == dims:
            continue
        mismatched = sum(other["shape"].get(k) != v for k, v in dims.items() if k != batch_dim)
        b_here, b_there = dims.get(batch_dim, 1), other["shape"].get(batch_dim, 1)
        distance = abs(math.log2(max(b_here, 1)) - math.log2(max(b_there, 1)))
        config = Config.make(best["config"])
        if space.violation(config, problem, device) is None:
            ranked.append(((mismatched, distance), config))
    ranked.sort(key=lambda r: r[0])
    out: list[Config] = []
    for _, config in ranked:
        if config not in out:
            out.append(config)
    return out[:MAX_PRIORS]
