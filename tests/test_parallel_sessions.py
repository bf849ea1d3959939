"""Two processes stepping one study (as service workers do) never both measure a config."""

from __future__ import annotations

from cotune.tuner.driver import StudySession
from cotune.tuner.measure.isolation import CandidateRunner
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.spec.job import parse_spec
from cotune.tuner.store.studies import open_storage
from cotune.tuner.track.tracker import NullTracker
from cotune.tuner.types import FailureKind, TrialStatus

SPEC = "name: par\nkernel: noop\nproblems: [{sleep_ms: 1}]\nbudget: {trials: 5}\nbench: {warmup: 0, repeats: 1}\n"


def test_the_later_of_two_simultaneous_asks_for_one_config_yields(tmp_path, cpu):
    spec = parse_spec(SPEC)
    kernel = get_kernel("noop")
    (problem,) = spec.expand()
    storage = open_storage(f"sqlite:///{tmp_path}/studies.db")
    with CandidateRunner() as runner:
        a, b = (
            StudySession(spec, kernel, kernel.space(), problem, cpu, storage, runner, NullTracker(), "s", parallel=True)
            for _ in range(2)
        )
        same = {"x": 64, "y": 3}
        a.study.enqueue_trial(same)
        a.study.enqueue_trial(same)
        first = a.study.ask(kernel.space().distributions())  # worker A is measuring `same` right now
        second = b.step()  # worker B was handed the same config a moment later
        assert second.status is TrialStatus.PRUNED
        assert second.failure.kind is FailureKind.IN_FLIGHT and second.duplicate_of == first.number
        assert b.objective.measured == 0
