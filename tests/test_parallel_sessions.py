"""Two processes stepping one study on PostgreSQL, as two service workers do, never both measure a program.

Each process is a real, separate interpreter (multiprocessing's spawn) with its own Optuna storage, candidate
process and :class:`StudySession`, reserving programs in the job store's database as a worker does.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter
from collections.abc import Iterator

import optuna
import pytest
from cotune.tuner.measure.trial_record import record
from cotune.tuner.store.jobs import JobStore, new_job_id
from cotune.tuner.store.studies import open_storage

from tests.service.conftest import pg_url  # noqa: F401 - the PostgreSQL database fixture

SPEC = (
    "name: par\nkernel: noop\nproblems: [{sleep_ms: 2}]\nbudget: {trials: 80}\n"
    "sampler: {name: cotune, seed: 3, transfer: false}\nbench: {warmup: 0, repeats: 1}\n"
)
WAIT = 120  # seconds a process may take to start (torch, the candidate process) on a loaded machine
spawn = mp.get_context("spawn")


def _session(url: str, job: str, study: str):
    from cotune.tuner.device.profiles import detect
    from cotune.tuner.driver import StudySession
    from cotune.tuner.measure.isolation import CandidateRunner
    from cotune.tuner.measure.registry import get_kernel
    from cotune.tuner.spec.job import parse_spec
    from cotune.tuner.store.pg import engine_for
    from cotune.tuner.store.reservations import ProgramReservations
    from cotune.tuner.track.tracker import NullTracker

    spec, kernel = parse_spec(SPEC), get_kernel("noop")
    (problem,) = spec.expand()
    runner = CandidateRunner()
    reservations = ProgramReservations(engine_for(url), job, study)
    return runner, StudySession(
        spec,
        kernel,
        kernel.space(),
        problem,
        detect("cpu"),
        open_storage(url),
        runner,
        NullTracker(),
        study,
        job,
        parallel=True,
        reservations=reservations,
    )


def _measure(url: str, job: str, study: str, tickets: list[int], ready, out) -> None:
    """A worker: once both are ready, run these trial tickets, each until it has measured a new program."""
    runner, session = _session(url, job, study)
    try:
        ready.wait(WAIT)
        for ordinal in tickets:
            session.study.sampler.seed_ticket(ordinal)
            session.step_until_measured()
        out.put("done")
    except BaseException as exc:
        out.put(f"{type(exc).__name__}: {exc}")
    finally:
        runner.close()


def _hold(url: str, job: str, study: str, reserved, release, out) -> None:
    """A worker that reserves the first queued config and pauses just before measuring it."""
    runner, session = _session(url, job, study)

    def paused(number: int) -> None:
        reserved.set()
        release.wait(WAIT)

    try:
        out.put(session.step(paused).status.value)
    except BaseException as exc:
        out.put(f"{type(exc).__name__}: {exc}")
    finally:
        runner.close()


@pytest.fixture
def job(pg_url) -> Iterator[tuple[str, str, str]]:  # noqa: F811 - the fixture imported above
    """A service job record with one study (reservations belong to a job's study), cancelled at the end so
    no worker's reaper of another test looks at it."""
    store = JobStore(pg_url)
    job_id = new_job_id()
    name = f"{job_id}:noop:sleep_ms=2:cpu"
    store.create_job("par", "cpu", {}, None, [(name, {"sleep_ms": 2}, 80, None)], None, job_id=job_id)
    optuna.create_study(storage=open_storage(pg_url), study_name=name)
    yield pg_url, job_id, name
    store.cancel(job_id)


def measured_programs(url: str, study: str) -> list[tuple]:
    """The configs trials ran the kernel for: a measurement or a failure of their own, not a reuse."""
    trials = optuna.load_study(study_name=study, storage=open_storage(url)).get_trials(deepcopy=False)
    return [
        tuple(sorted(t.params.items()))
        for t in trials
        if record(t).get("status") in ("ok", "fail") and "duplicate_of" not in record(t)
    ]


def test_two_processes_stepping_one_study_never_measure_a_program_twice(job):
    url, job_id, study = job
    ready, out = spawn.Barrier(3), spawn.Queue()
    per_process = 30
    procs = [
        spawn.Process(target=_measure, args=(url, job_id, study, list(range(k, 2 * per_process, 2)), ready, out))
        for k in range(2)
    ]
    for p in procs:
        p.start()
    ready.wait(WAIT)  # both have opened their session and candidate process: they start together
    outcomes = [out.get(timeout=WAIT + 300) for _ in procs]
    for p in procs:
        p.join(30)
    assert outcomes == ["done", "done"], outcomes
    programs = measured_programs(url, study)
    twice = {p: n for p, n in Counter(programs).items() if n > 1}
    assert not twice, f"measured more than once: {twice}"
    assert len(programs) == 2 * per_process


def test_a_config_being_measured_by_one_process_is_not_measured_by_another(job):
    """Process A holds the config (reserved, about to measure); this process, asked the same config, yields to
    A's trial instead of measuring it, and once A has measured it, reuses A's result."""
    from cotune.tuner.types import FailureKind, TrialStatus

    url, job_id, study = job
    same = {"x": 64, "y": 3}
    optuna.load_study(study_name=study, storage=open_storage(url)).enqueue_trial(same)
    reserved, release, out = spawn.Event(), spawn.Event(), spawn.Queue()
    holder = spawn.Process(target=_hold, args=(url, job_id, study, reserved, release, out))
    holder.start()
    runner, session = _session(url, job_id, study)
    try:
        assert reserved.wait(WAIT), "process A never reserved its config"
        session.study.enqueue_trial(same)
        second = session.step()
        assert second.status is TrialStatus.PRUNED and second.failure.kind is FailureKind.IN_FLIGHT
        first = second.duplicate_of
        assert first is not None and session.study.get_trials(deepcopy=False)[first].params == same
        assert session.objective.measured == 0
        release.set()
        assert out.get(timeout=WAIT) == "ok"
        session.study.enqueue_trial(same)
        third = session.step()
        assert third.duplicate_of == first and third.status is TrialStatus.OK
    finally:
        release.set()
        runner.close()
        holder.join(30)
    assert measured_programs(url, study) == [tuple(sorted(same.items()))]
