"""Running one ticket inside a worker's pool process: claim it, hold its lease, step the study, settle it.

The study code is the local driver's :class:`cotune.tuner.driver.StudySession`; only the loop around it differs.
Per process, the Optuna storage, the candidate runner and each study's session are opened once and reused,
so a trial costs a claim, an ask, a tell and a finish, not a re-open of everything.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from cotune.tuner.device.profiles import detect
from cotune.tuner.driver import StudySession
from cotune.tuner.measure.isolation import CandidateRunner
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.measure.trial_record import fail_lost_trial
from cotune.tuner.spec.settings import ServiceSettings
from cotune.tuner.store.job_tables import Claim, TicketKind
from cotune.tuner.store.jobs import JobStore
from cotune.tuner.store.reservations import ProgramReservations
from cotune.tuner.store.studies import open_storage
from cotune.tuner.track.tracker import NullTracker, Tracker
from cotune.tuner.types import DeviceProfile, Problem
from cotune.worker.dispatch import open_store, send_tickets, spec_from_record

log = logging.getLogger("cotune.worker")


@dataclass
class WorkerContext:
    settings: ServiceSettings
    store: JobStore
    device: DeviceProfile
    optuna_storage: Any
    runner: CandidateRunner
    sessions: dict[tuple[str, str], StudySession] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: ServiceSettings) -> WorkerContext:
        # `cotune worker --gpu N` sets COTUNE_DEVICE=cuda (and CUDA_VISIBLE_DEVICES=N) before the pool starts
        device = detect(os.environ.get("COTUNE_DEVICE", "cpu"))
        return cls(settings, open_store(settings), device, open_storage(settings.storage), CandidateRunner())

    def session(self, job_id: str, study: str) -> StudySession:
        key = (job_id, study)
        if key not in self.sessions:
            self._drop_ended_jobs()
            job = self.store.job(job_id)
            spec = spec_from_record(job["spec"])
            row = next(s for s in self.store.studies(job_id) if s["name"] == study)
            kernel = get_kernel(spec.kernel)
            tracker = _tracker(self.settings.tracking_uri(job["mlflow_setting"]), spec.name)
            problem = Problem.from_json(json.loads(row["problem"]))
            self.sessions[key] = StudySession(
                spec,
                kernel,
                kernel.space(),
                problem,
                self.device,
                self.optuna_storage,
                self.runner,
                tracker,
                study,
                job_id,
                parallel=True,
                # each program is reserved before it is measured, so two workers never measure one
                reservations=ProgramReservations(self.store.engine, job_id, study),
            )
        return self.sessions[key]

    def drop(self, job_id: str, study: str) -> None:
        session = self.sessions.pop((job_id, study), None)
        if session is not None:
            session.tracker.close()

    def _drop_ended_jobs(self) -> None:
        active = {j["id"] for j in self.store.active_jobs()}
        for job_id, study in [k for k in self.sessions if k[0] not in active]:
            self.drop(job_id, study)

    def close(self) -> None:
        for job_id, study in list(self.sessions):
            self.drop(job_id, study)
        self.runner.close()


# After MLflow failed to open, sessions opened within this many seconds skip it without trying (each try
# costs MLflow's retries, about 7 s); what they measure is written by the MLflow sync later.
MLFLOW_RETRY_S = 30.0
_mlflow_down_until = 0.0


def _tracker(uri: str | None, job_name: str) -> Tracker:
    """The study's MLflow tracker, or a NullTracker when MLflow cannot be reached: a worker measures
    whatever MLflow's state, and the study stays owed to MLflow (:mod:`cotune.worker.mlflow_sync`)."""
    global _mlflow_down_until
    if not uri or time.monotonic() < _mlflow_down_until:
        return NullTracker()
    from cotune.tuner.track.mlflow_tracker import MlflowTracker

    try:
        tracker = MlflowTracker(uri, shared=True)
        tracker.start_job(job_name)
    except Exception as exc:  # StorageError, MlflowException, a socket error: all mean "not now"
        _mlflow_down_until = time.monotonic() + MLFLOW_RETRY_S
        log.warning("MLflow cannot be reached; measuring without it (its runs are written later): %s", exc)
        return NullTracker()
    return tracker


class Heartbeat:
    """Renews a claim's lease every lease/3 seconds while the ticket runs."""

    def __init__(self, store: JobStore, claim: Claim, lease_s: float) -> None:
        self._store, self._claim, self._lease_s = store, claim, lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="cotune-heartbeat", daemon=True)
        self.lost = False

    def _beat(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            try:
                if not self._store.renew(self._claim, self._lease_s):
                    self.lost = True  # taken back; our tell is then skipped and the reaper settles the ticket
                    return
            except Exception as exc:  # a database blip: try again at the next beat, before the lease runs out
                log.warning("lease renewal for ticket %s failed: %s", self._claim.ticket_id, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_ticket(ctx: WorkerContext, app, ticket_id: int, worker: str) -> str:
    """Run one ticket; returns what happened, for the worker's log. Never leaves the ticket claimed on error."""
    store = ctx.store
    claim = store.claim(ticket_id, worker, ctx.settings.lease_s)
    if claim is None:
        return "not claimable"
    try:
        with Heartbeat(store, claim, ctx.settings.lease_s):
            if claim.kind is TicketKind.TRIAL:
                outcome = _run_trial(ctx, app, claim)
            else:
                outcome = _finalize(ctx, claim)
    except SoftTimeLimitExceeded:
        # Cut anywhere in a step (a measurement, a write, MLflow): the study's session is dropped rather than
        # trusted half-way; the candidate process was killed by the runner and the trial failed by _run_trial.
        ctx.drop(claim.job_id, claim.study)
        error = f"SoftTimeLimitExceeded: {time_limit_reason(ctx.settings)}"
        log.warning("ticket %s: %s", ticket_id, error)
        return _release(ctx, app, claim, error)
    except Exception as exc:
        log.exception("ticket %s raised", ticket_id)
        return _release(ctx, app, claim, f"{type(exc).__name__}: {exc}")
    if claim.kind is TicketKind.FINALIZE:
        store.complete_job_if_done(claim.job_id)
    return outcome


def time_limit_reason(settings: ServiceSettings) -> str:
    return (
        f"stopped at the workers' soft task time limit of {settings.task_soft_time_limit_s:g} s "
        f"(COTUNE_TASK_TIME_LIMIT_S={settings.task_time_limit_s:g})"
    )


def _release(ctx: WorkerContext, app, claim: Claim, error: str) -> str:
    """Put the ticket back to run again, a few seconds later; after its last attempt the store fails the job."""
    if ctx.store.release_after_error(claim, error):
        job = ctx.store.job(claim.job_id)
        send_tickets(app, ctx.store, job["hardware"], [claim.ticket_id], countdown=2)
    return f"error: {error}"


def _run_trial(ctx: WorkerContext, app, claim: Claim) -> str:
    store = ctx.store
    if claim.past_deadline:
        _finish_trial(ctx, app, claim, "deadline", None)
        return "deadline"
    session = ctx.session(claim.job_id, claim.study)
    if session.stalled():  # budget.patience: the study's best has stopped moving, whoever measured it
        _finish_trial(ctx, app, claim, "stalled", None)
        return "stalled"
    measured: list[int] = []

    def on_measure(number: int) -> None:
        measured.append(number)
        store.set_trial(claim, number)

    # the ticket's sampler seed derives from the job's seed and the ticket's place in its study, so a job
    # repeats with its seed as far as docs/service.md says (never from the process or the time)
    session.study.sampler.seed_ticket(claim.ordinal)
    try:
        result = session.step_until_measured(on_measure)
    except SoftTimeLimitExceeded:
        _fail_cut_trial(ctx, session)
        raise
    outcome = "exhausted" if result is None else result.status.value
    _finish_trial(ctx, app, claim, outcome, measured[-1] if measured else None)
    return outcome


def _fail_cut_trial(ctx: WorkerContext, session: StudySession) -> None:
    """Fail the trial a time limit cut short now, as a lost worker's is (not counted, its program given back
    for the ticket's next attempt), instead of leaving it RUNNING until a reaper finds it orphaned."""
    number = session.stepping
    if number is None:
        return
    reason = f"{time_limit_reason(ctx.settings)} while this trial ran"
    if fail_lost_trial(session.study, number, reason) and session.reservations is not None:
        session.reservations.release([number])


def _finish_trial(ctx: WorkerContext, app, claim: Claim, outcome: str, trial_number: int | None) -> None:
    released = ctx.store.finish(claim, outcome, trial_number)
    if released is not None:  # this was the study's last trial: queue its top-k re-measure
        send_tickets(app, ctx.store, ctx.store.job(claim.job_id)["hardware"], [released])


def _finalize(ctx: WorkerContext, claim: Claim) -> str:
    session = ctx.session(claim.job_id, claim.study)
    session.refresh()
    best = session.finish()
    if session.tracked:  # else the study stays owed, and the MLflow sync writes what MLflow lacks
        ctx.store.mark_mlflow_synced(claim.job_id, claim.study)
    outcome = "ok" if best is not None else "no_result"
    ctx.store.finish(claim, outcome)
    ctx.drop(claim.job_id, claim.study)
    return outcome
