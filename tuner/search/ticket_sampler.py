"""The sampler of a study that several service workers ask at once, seeded per trial ticket."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cotune.tuner.search.samplers import ticket_seed
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState


class TicketSampler(BaseSampler):
    """Seeded by :func:`~cotune.tuner.search.samplers.ticket_seed` before each trial ticket
    (:meth:`seed_ticket`), so a ticket's random draws depend on the job's seed and the ticket, never on the
    process, the time, or the tickets this process ran before. Optuna's samplers are rebuilt with the seed;
    the cotune sampler gets a new random stream and keeps its fitted model, whose refits (every 10 results it
    has seen) do depend on the tickets this process ran (docs/service.md, "Reproducibility"). Asks before any
    ticket draw fresh entropy. Every call of Optuna's sampler contract goes to the sampler it wraps."""

    def __init__(self, build: Callable[[int | None], BaseSampler], seed: int | None) -> None:
        self._build, self._seed = build, seed
        self.inner = build(None)

    def seed_ticket(self, ordinal: int) -> None:
        from cotune.tuner.search.candidate_sampler import CandidateSampler

        seed = ticket_seed(self._seed, ordinal)
        if isinstance(self.inner, CandidateSampler):
            # only its random stream: its model's kernel is refit every 10 results, which at a few hundred
            # results takes seconds, too much to repeat for every ticket
            self.inner.reseed(seed)
        else:
            self.inner = self._build(seed)  # Optuna's samplers hold nothing else worth keeping

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
