"""Warm starts from related studies in the same storage: the same kernel, precision, objective and device
on other shapes, nearest batch size first.

Two uses. The nearest study's winner is measured first (``enqueue_trial``): tile configs transfer well
between neighbouring batch sizes (vLLM's tuned tables change every few powers of two, not at every M), so
a new batch size starts where the previous one ended. And the ``cotune`` sampler takes the nearest
studies' measured trials as a model feature, which the replay benchmark measured across GPUs
(``+related`` against ``+transfer``, enqueued winners only, in bench/results/search_efficiency*).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from cotune.tuner.space.search_space import SearchSpace
from cotune.tuner.types import Config, DeviceProfile, Problem

if TYPE_CHECKING:
    from cotune.tuner.measure.kernel import Kernel
    from cotune.tuner.spec.job import JobSpec

MAX_PRIORS = 1
MAX_RELATED = 2
# A table row's neighbours' winners timed within this of each other here: the table does not change there.
TABLE_AGREEMENT = 0.02


def neighbour_winners(
    storage: Any, space: SearchSpace, problem: Problem, device: DeviceProfile, batch_dim: str, objective: str
) -> list[Config]:
    """Best configs of finished related studies that are feasible here, nearest shape first."""
    out: list[Config] = []
    for summary in _related_studies(storage, problem, device, batch_dim, objective):
        config = Config.make(summary.user_attrs["best"]["config"])
        if config not in out and space.violation(config, problem, device) is None:
            out.append(config)
    return out[:MAX_PRIORS]


def first_configs(
    storage: Any,
    spec: JobSpec,
    kernel: Kernel,
    space: SearchSpace,
    problem: Problem,
    device: DeviceProfile,
    budget: int | None,
) -> list[Config]:
    """What a new study measures first: the nearest finished studies' winners (when ``sampler.transfer`` asks
    for them), then the space's known-good seeds, each once. Used by ``cotune tune`` and by the service at
    submit."""
    winners = spec.sampler.transfer_winner
    out = neighbour_winners(storage, space, problem, device, kernel.batch_dim, spec.objective.value) if winners else []
    return list(dict.fromkeys(out + space.known_good(problem, device, budget)))


def table_neighbours(
    storage: Any, problem: Problem, device: DeviceProfile, batch_dim: str, objective: str
) -> tuple[Config | None, Config | None]:
    """The winners of the nearest finished studies below and above this problem's batch size that differ from
    it in nothing else (the same kernel, dtype, objective, device and other dims): its neighbours in a table
    of batch sizes, such as a vLLM config file's rows."""
    here = problem.dims.get(batch_dim, 1)
    below: tuple[int, Config] | None = None
    above: tuple[int, Config] | None = None
    for summary in _related_studies(storage, problem, device, batch_dim, objective):
        shape = summary.user_attrs["problem"]["shape"]
        if any(shape.get(k) != v for k, v in problem.dims.items() if k != batch_dim):
            continue
        there, winner = shape.get(batch_dim, 1), Config.make(summary.user_attrs["best"]["config"])
        if there < here and (below is None or there > below[0]):
            below = (there, winner)
        elif there > here and (above is None or there < above[0]):
            above = (there, winner)
    return (below[1] if below else None), (above[1] if above else None)


def table_order(problems: list[Problem], batch_dim: str) -> list[Problem]:
    """Each table's batch sizes (problems differing only in ``batch_dim``) in bisection order: the smallest
    and the largest, then the middle of every gap, so every batch size after the first two is tuned between
    two tuned neighbours. Tables keep their first appearance's order."""
    tables: dict[tuple, list[Problem]] = {}
    for p in problems:
        rest = tuple((k, v) for k, v in p.shape if k != batch_dim)
        tables.setdefault((rest, p.dtype), []).append(p)
    out: list[Problem] = []
    for members in tables.values():
        ordered = sorted(members, key=lambda p: p.dims.get(batch_dim, 1))
        picked = [0, len(ordered) - 1] if len(ordered) > 1 else [0]
        gaps = [(0, len(ordered) - 1)]
        while gaps:
            lo, hi = gaps.pop(0)
            if hi - lo > 1:
                mid = (lo + hi) // 2
                picked.append(mid)
                gaps += [(lo, mid), (mid, hi)]
        out += [ordered[i] for i in picked]
    return out


def neighbour_trials(
    storage: Any, problem: Problem, device: DeviceProfile, batch_dim: str, objective: str, *, maximize: bool
) -> list[list[tuple[dict, float | None]]]:
    """The measured trials of the nearest related studies, as (params, value) with lower better (a
    maximised objective is negated) and None for a failed config, for the sampler's model."""
    import optuna
    from optuna.trial import TrialState

    out = []
    for summary in _related_studies(storage, problem, device, batch_dim, objective)[:MAX_RELATED]:
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        pairs: list[tuple[dict, float | None]] = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            if t.state is TrialState.FAIL:
                pairs.append((t.params, None))
            elif t.values is not None and len(t.values) == 1:  # an older study without an objective attr may hold pairs
                pairs.append((t.params, -t.values[0] if maximize else t.values[0]))
        out.append(pairs)
    return out


def _related_studies(storage: Any, problem: Problem, device: DeviceProfile, batch_dim: str, objective: str) -> list:
    """Summaries of finished studies of this kernel, dtype, objective and device on other shapes, ordered
    by how close their shape is (other dims must match first, then the batch dim on a log scale)."""
    import optuna

    ranked = []
    # the studies' attributes only: a summary would load every trial of every study in the storage, once
    # per problem of a submit (a 150-problem service submit spent 10 of its 28 s there)
    for s in optuna.storages.get_storage(storage).get_all_studies():
        attrs = s.user_attrs
        other = attrs.get("problem")
        if not other or not attrs.get("best") or attrs.get("device", {}).get("name") != device.name:
            continue
        if other["kernel"] != problem.kernel or other["dtype"] != problem.dtype.value:
            continue
        if attrs.get("objective", objective) != objective:
            continue
        dims = problem.dims
        if other["shape"] == dims:
            continue
        mismatched = sum(other["shape"].get(k) != v for k, v in dims.items() if k != batch_dim)
        b_here, b_there = dims.get(batch_dim, 1), other["shape"].get(batch_dim, 1)
        distance = abs(math.log2(max(b_here, 1)) - math.log2(max(b_there, 1)))
        ranked.append(((mismatched, distance, s.study_name), s))
    ranked.sort(key=lambda r: r[0])
    return [s for _, s in ranked]
