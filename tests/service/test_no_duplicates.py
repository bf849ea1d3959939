"""No config is measured twice by two workers: each program is reserved in PostgreSQL before it is measured
(:mod:`cotune.tuner.store.reservations`), and a trial lost with its worker gives its program back."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
import pytest
from cotune.tuner.measure.trial_record import counted, record
from cotune.tuner.store.jobs import JobStore, new_job_id
from cotune.tuner.store.pg import engine_for
from cotune.tuner.store.reservations import ProgramReservations
from cotune.tuner.store.studies import open_storage

from tests.service.conftest import noop_spec, submit, wait_job
from tests.service.stack import wait_for

WAIT = 300  # seconds a 60-trial job may take on a loaded 2-core machine; it needs well under a minute
TRIALS = 60


def measured(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    """Trials that measured their config: a measurement or failure of their own, not a reuse of another's,
    not a yield to a trial in flight, not one lost with its worker (its program is free again)."""
    trials = optuna.load_study(study_name=study, storage=open_storage(url)).get_trials(deepcopy=False)
    return [t for t in trials if counted(t) and record(t)["status"] in ("ok", "fail")]


def run_and_check(service, tmp_path: Path, sleep_ms: int) -> None:
    job = submit(service, tmp_path, noop_spec(f"nodup{sleep_ms}", trials=TRIALS, sleep_ms=sleep_ms))
    record_ = wait_job(service, job, WAIT)
    assert record_["state"] == "succeeded" and record_["trials"]["finished"] == TRIALS, record_["trials"]
    (study,) = record_["studies"]
    configs = Counter(tuple(sorted(t.params.items())) for t in measured(service.env["COTUNE_STORAGE"], study["name"]))
    twice = {c: n for c, n in configs.items() if n > 1}
    assert not twice, f"measured by more than one trial: {twice}\n{service.diagnosis(job)}"
    assert sum(configs.values()) == TRIALS
    workers = {t["worker"].split("@")[0] for t in service.tickets(job) if t["kind"] == "trial" and t["worker"]}
    assert workers == {"a", "b"}, "both workers should have measured"


def test_two_workers_measure_sixty_configs_once_each(service, tmp_path):
    """Short trials (2 ms), so the two workers ask at nearly the same moments; the cotune sampler, whose
    model proposes the same best guess to both from the same trials."""
    service.start_worker("a")
    service.start_worker("b")
    run_and_check(service, tmp_path, sleep_ms=2)


@pytest.mark.slow
def test_two_workers_measure_sixty_configs_once_each_five_times(service, tmp_path):
    service.start_worker("a")
    service.start_worker("b")
    for sleep_ms in (3, 4, 5, 6, 7):  # a new problem, so a new study, each time
        run_and_check(service, tmp_path, sleep_ms)


# -- reservations --------------------------------------------------------------------------------------------


@pytest.fixture
def study(pg_url):
    """A service job's study (a job record and its Optuna study), cancelled at the end so that no worker's
    reaper in a later test looks at it."""
    store = JobStore(pg_url)
    job = new_job_id()
    name = f"{job}:noop:sleep_ms=2:cpu"
    _, tickets = store.create_job("res", "cpu", {}, None, [(name, {"sleep_ms": 2}, 4, None)], None, job_id=job)
    optuna.create_study(storage=open_storage(pg_url), study_name=name)
    yield store, job, name, tickets
    store.cancel(job)


def test_a_reservation_is_held_by_one_trial_until_its_holder_is_lost(study, pg_url):
    _, job, name, _ = study
    res = ProgramReservations(engine_for(pg_url), job, name)
    assert res.reserve("p", 5) is None
    assert res.reserve("p", 5) is None  # the holder again: still its own
    assert res.reserve("p", 7) == 5
    assert res.reserve("p", 7, lost={4, 6}) == 5  # only the holder's loss frees it
    assert res.held(among=[5, 7]) == {"p": 5}
    assert res.reserve("p", 7, lost={5}) is None  # taken over from a lost holder
    assert res.held(among=[5, 7]) == {"p": 7}
    assert res.release([7]) == 1 and res.held(among=[7]) == {}
    assert res.reserve("p", 9) is None


class WorkerDied(Exception):
    pass


def test_a_trial_lost_with_its_worker_gives_its_program_back(study, pg_url, redis_server, cpu):
    """A worker reserved a config and was killed before measuring it. Once its lease runs out, a reaper fails
    the trial as worker_lost and releases the reservation, and another worker measures the config."""
    from cotune.tuner.device.profiles import queue_name
    from cotune.tuner.driver import StudySession
    from cotune.tuner.measure.isolation import CandidateRunner
    from cotune.tuner.measure.registry import get_kernel
    from cotune.tuner.spec.job import parse_spec
    from cotune.tuner.spec.settings import ServiceSettings
    from cotune.tuner.track.tracker import NullTracker
    from cotune.tuner.types import TrialStatus
    from cotune.worker.app import make_app
    from cotune.worker.reaper import Reaper

    store, job, name, tickets = study
    spec, kernel = parse_spec(noop_spec("res", trials=4, sleep_ms=2)), get_kernel("noop")
    (problem,) = spec.expand()
    storage = open_storage(pg_url)
    res = ProgramReservations(engine_for(pg_url), job, name)
    same = {"x": 8, "y": 2}

    def session(runner: CandidateRunner) -> StudySession:
        args = (spec, kernel, kernel.space(), problem, cpu, storage, runner, NullTracker(), name, job)
        return StudySession(*args, parallel=True, reservations=res)

    claim = store.claim(tickets[0], "doomed@test", lease_s=1)

    def dies(number: int) -> None:  # what the worker does just before measuring, then its process is gone
        store.set_trial(claim, number)
        raise WorkerDied

    with CandidateRunner() as runner:
        doomed = session(runner)
        doomed.study.enqueue_trial(same)
        with pytest.raises(WorkerDied):
            doomed.step(dies)
        (lost,) = doomed.study.get_trials(deepcopy=False)
        assert res.held(among=[lost.number]), "the doomed trial should hold its program"

        settings = ServiceSettings.from_env({"COTUNE_STORAGE": pg_url, "COTUNE_BROKER_URL": redis_server.url})
        reaper = Reaper(make_app(settings), settings, {queue_name("cpu")})

        def reaped() -> bool:
            reaper.reap_once()
            return record(doomed.study.get_trials(deepcopy=False)[lost.number]).get("failure_kind") == "worker_lost"

        wait_for(reaped, 60, "the reaper to fail the trial of the expired lease", interval=0.5)
        assert res.held(among=[lost.number]) == {}, "the lost trial's reservation should be released"

        survivor = session(runner)
        survivor.study.enqueue_trial(same)
        again = survivor.step()
        assert again.status is TrialStatus.OK and again.duplicate_of is None  # measured, by the survivor
    assert [t.params for t in measured(pg_url, name)] == [same]
