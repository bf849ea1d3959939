"""The reaper: a thread in each worker's main process that repairs what dead workers and a lost broker leave.

Every ``reap_interval_s``, jobs that a killed submitter left ``submitting`` are failed and their studies and
MLflow runs removed (:func:`cotune.worker.dispatch.sweep_abandoned`); then, for each active job on a queue
this worker serves:

1. tickets whose lease ran out are taken back; the trial each was measuring is failed (``worker_lost``)
   unless it had already finished on its own, in which case the ticket counts as done;
2. RUNNING trials that no live ticket holds and that started more than two leases ago are failed
   (a worker killed between asking a trial and recording it); a trial failed in 1 or 2 gives back the
   program it had reserved, so that another worker measures it;
3. a study whose trial tickets are all closed but whose finalize ticket was never released (a job left
   so by a version before the store serialised that release) gets it released;
4. if the job's queue is empty but it still has pending tickets that were not sent recently, their
   messages are gone (Redis restarted empty, or a killed worker held them) and they are sent again.
   A ticket delivered twice is harmless: only one delivery can claim it.

Optuna's own heartbeats act only inside ``study.optimize()``, which a service does not use.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from celery import Celery
from cotune.tuner.device.profiles import queue_name
from cotune.tuner.measure.trial_record import TRIAL_ATTR, counted, fail_lost_trial, record
from cotune.tuner.spec.settings import ServiceSettings
from cotune.tuner.store.jobs import JobStore
from cotune.tuner.store.reservations import ProgramReservations
from cotune.tuner.store.studies import open_storage
from cotune.tuner.types import FailureKind
from cotune.worker.dispatch import send_tickets, sweep_abandoned

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("cotune.reaper")


def queue_depth(app: Celery, queue: str) -> int:
    from kombu.exceptions import ChannelError

    with app.connection_for_read() as conn:
        try:
            return conn.default_channel.queue_declare(queue=queue, passive=True).message_count
        except ChannelError:  # Redis has no key for an empty queue
            return 0


class Reaper:
    def __init__(self, app: Celery, settings: ServiceSettings, queues: Iterable[str]) -> None:
        self.app, self.settings = app, settings
        self.queues = set(queues)
        self.store = JobStore(settings.storage)
        self.storage = open_storage(settings.storage)

    def reap_once(self) -> None:
        sweep_abandoned(self.settings, self.store)  # jobs a killed submitter left half-made
        for job in self.store.active_jobs():
            if queue_name(job["hardware"]) in self.queues:
                try:
                    self._reap_job(job)
                except Exception:  # one broken job (its study deleted by hand, say) must not stall the others
                    log.warning("reaping %s failed", job["id"], exc_info=True)

    def _reap_job(self, job: dict) -> None:
        import optuna

        job_id = job["id"]
        studies = {
            s["name"]: optuna.load_study(study_name=s["name"], storage=self.storage) for s in self.store.studies(job_id)
        }
        for expired in self.store.take_expired(job_id):
            outcome = None
            study = studies[expired.study]
            if expired.trial_number is not None:
                fail_lost_trial(study, expired.trial_number, "the worker measuring it stopped renewing its lease")
                t = study.get_trials(deepcopy=False)[expired.trial_number]
                if counted(t):
                    outcome = t.user_attrs[TRIAL_ATTR]["status"]
                self._release_reservations(job_id, expired.study, study, [expired.trial_number])
            self.store.settle(expired, outcome)
            log.warning(
                "ticket %s of %s taken back from a lost worker (%s)",
                expired.ticket_id,
                job_id,
                "its trial had finished" if outcome else "re-queued",
            )

        live = self.store.live_trials(job_id)
        cutoff = dt.datetime.now() - dt.timedelta(seconds=2 * self.settings.lease_s)  # Optuna's naive local time
        for name, study in studies.items():
            orphans = [
                t.number
                for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                if (name, t.number) not in live and t.datetime_start is not None and t.datetime_start < cutoff
            ]
            for number in orphans:
                fail_lost_trial(study, number, "RUNNING with no live worker holding it")
            self._release_reservations(job_id, name, study, orphans)

        for name in studies:  # after a settled ticket, or left unreleased by an older version
            self._release_finalize(job, name)

        grace = max(10.0, 3 * self.settings.reap_interval_s)
        stale = self.store.stale_pending(job_id, grace)
        if stale and queue_depth(self.app, queue_name(job["hardware"])) == 0:
            log.warning("re-sending %d ticket(s) of %s whose messages are gone", len(stale), job_id)
            send_tickets(self.app, self.store, job["hardware"], [i for i, _ in stale])
        self.store.complete_job_if_done(job_id)

    def _release_reservations(self, job_id: str, name: str, study: optuna.Study, numbers: list[int]) -> None:
        """Give back the programs of those trials that are now failed as worker_lost, so another worker measures
        them (:mod:`cotune.tuner.store.reservations`). A trial that finished on its own keeps its program:
        whoever wants it again reuses its result."""
        if not numbers:
            return
        trials = study.get_trials(deepcopy=False)
        lost = [n for n in numbers if record(trials[n]).get("failure_kind") == FailureKind.WORKER_LOST.value]
        if lost:
            ProgramReservations(self.store.engine, job_id, name).release(lost)

    def _release_finalize(self, job: dict, study: str) -> None:
        released = self.store.release_finalize(job["id"], study)
        if released is not None:
            send_tickets(self.app, self.store, job["hardware"], [released])

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.reap_interval_s):
            try:
                self.reap_once()
            except Exception:  # the broker or database is down: try again next round
                log.warning("reaper round failed", exc_info=True)


def start_reaper(app: Celery, settings: ServiceSettings, hostname: str) -> threading.Event:
    queues = {q.name for q in app.amqp.queues.consume_from.values()} if app.amqp.queues.consume_from else set()
    stop = threading.Event()
    reaper = Reaper(app, settings, queues or {queue_name("cpu")})
    threading.Thread(target=reaper.run_forever, args=(stop,), name=f"cotune-reaper-{hostname}", daemon=True).start()
    return stop
