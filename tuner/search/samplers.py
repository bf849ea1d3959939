"""Sampler construction by name, shared by the tuning driver and the replay backend."""

from __future__ import annotations

import logging
import os
import time
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

    ``parallel``: several processes ask the same study at once (service workers). Each then needs its own
    random stream, or they all propose the same sequence and collide, and TPE treats trials still running
    as bad results (constant liar) so it does not propose them again.
    """
    import optuna

    if name == "cotune" and (candidates is None or distributions is None):
        # The space is too large to enumerate; TPE needs no list of configs.
        log.warning("sampler cotune needs an enumerable space; using TPE for this study")
        name = "tpe"
    if name == "cotune":
        from cotune.tuner.search.candidate_sampler import CandidateSampler

        if parallel:
            seed = _own_stream(seed)
        return CandidateSampler(candidates, distributions, seed=seed, related=related, **(options or {}))
    if parallel:
        seed = _own_stream(seed)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)

    factories = {
        "tpe": optuna.samplers.TPESampler,
        "tpe-mv": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True),
        "random": optuna.samplers.RandomSampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
    }
    if name not in factories:
        raise UnknownSamplerError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return factories[name](seed=seed)


def _own_stream(seed: int | None) -> int | None:
    """A seed of this process's own, derived from the spec's, so parallel workers do not propose alike."""
    return None if seed is None else hash((seed, os.getpid(), time.time_ns())) % 2**32
