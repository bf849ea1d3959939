"""The candidate process: a request left by an exception (a Celery soft time limit, Ctrl-C) does not poison it."""

from __future__ import annotations

import signal

import pytest
from cotune.tuner.measure.isolation import CandidateRunner, Request
from cotune.tuner.measure.kernel import BenchSettings
from cotune.tuner.types import Config, Measurement, Problem


class Cut(Exception):
    """Raised from a signal handler in the middle of a wait, as Celery raises SoftTimeLimitExceeded."""


def _request(sleep_ms: int, cpu) -> Request:
    problem = Problem.make("noop", {"sleep_ms": sleep_ms}, "fp32")
    return Request(problem, Config.make({}), cpu, BenchSettings(warmup=0, repeats=1, timeout_s=30))


def test_a_request_cut_by_an_exception_leaves_no_busy_child_for_the_next(cpu):
    def cut(*_: object) -> None:
        raise Cut

    previous = signal.signal(signal.SIGALRM, cut)
    try:
        with CandidateRunner() as runner:
            signal.setitimer(signal.ITIMER_REAL, 1.0)
            with pytest.raises(Cut):
                runner.run(_request(60_000, cpu))  # still sleeping when the signal cuts the wait
            signal.setitimer(signal.ITIMER_REAL, 0)
            # the old child would answer this with its 60 s measurement, or not within the 30 s timeout
            result = runner.run(_request(1, cpu))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert isinstance(result, Measurement), result
    assert result.median_s < 1.0
