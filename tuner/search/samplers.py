"""Sampler construction by name, shared by the tuning driver and the replay backend."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cotune.tuner.errors import SpecError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

SAMPLERS = ("cotune", "tpe", "tpe-mv", "random", "gp", "cmaes")


class UnknownSamplerError(SpecError, ValueError):
    """A sampler name outside :data:`SAMPLERS`."""


def make_sampler(
    name: str,
    seed: int | None,
    *,
    parallel: bool = False,
    candidates: Sequence[Mapping[str, Any]] | None = None,
    distributions: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    related: Sequence[Sequence[tuple[Mapping[str, Any], float | None]]] = (),
) -> BaseSampler:
    """Build a sampler by name.

    ``candidates``/``distributions``: the enumerated feasible configs, which ``cotune`` needs; without
    them (a space too large to enumerate) ``cotune`` falls back to TPE.

    ``options``: keyword arguments for the ``cotune`` sampler (for benchmarks of its settings).

    ``related``: related studies' (params, value) pairs, lower is better, which the ``cotune`` sampler uses
    as model features; the other samplers ignore them.

    ``parallel``: several processes ask the same study at once (service workers). The sampler is then a
    :class:`~cotune.tuner.search.ticket_sampler.TicketSampler`, seeded afresh for each trial ticket, and TPE
    treats trials still running as bad results (constant liar) so it does not propose them again.
    """
    if name == "cotune" and (candidates is None or distributions is None):
        # The space is too large to enumerate; TPE needs no list of configs.
        log.warning("sampler cotune needs an enumerable space; using TPE for this study")
        name = "tpe"
    if name not in SAMPLERS:
        raise UnknownSamplerError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")

    build = functools.partial(
        _build,
        name,
        parallel=parallel,
        candidates=candidates,
        distributions=distributions,
        options=options,
        related=related,
    )
    if not parallel:
        return build(seed)
    from cotune.tuner.search.ticket_sampler import TicketSampler

    return TicketSampler(build, seed)


def _build(
    name: str,
    seed: int | None,
    *,
    parallel: bool,
    candidates: Sequence[Mapping[str, Any]] | None,
    distributions: Mapping[str, Any] | None,
    options: Mapping[str, Any] | None,
    related: Sequence[Sequence[tuple[Mapping[str, Any], float | None]]],
) -> BaseSampler:
    import optuna

    if name == "cotune":
        from cotune.tuner.search.candidate_sampler import CandidateSampler

        return CandidateSampler(candidates, distributions, seed=seed, related=related, **(options or {}))
    if parallel and name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    factories = {
        "tpe": optuna.samplers.TPESampler,
        "tpe-mv": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True),
        "random": optuna.samplers.RandomSampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return factories[name](seed=seed)


def ticket_seed(seed: int | None, ordinal: int) -> int | None:
    """The sampler seed of a job's ``ordinal``-th trial ticket of a study: a function of the job's seed and
    that number only, so a ticket gets the same stream whichever worker runs it, and no two tickets of a
    study share one. None (no seed in the spec) stays None: fresh entropy for every ticket."""
    if seed is None:
        return None
    import numpy as np

    return int(np.random.SeedSequence([seed, ordinal]).generate_state(1)[0])
