"""Sampler construction by name, shared by the tuning driver and the replay backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.errors import SpecError

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

SAMPLERS = ("tpe", "random", "gp", "cmaes")


class UnknownSamplerError(SpecError, ValueError):
    """A sampler name outside :data:`SAMPLERS`."""


def make_sampler(name: str, seed: int | None) -> BaseSampler:
    import optuna

    factories = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
    }
    if name not in factories:
        raise UnknownSamplerError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    return factories[name](seed=seed)
