"""Celery tasks: thin, idempotent, JSON in and out. The work is in :mod:`cotune.worker.execution`."""

from __future__ import annotations

import logging

from celery.signals import worker_process_init, worker_process_shutdown, worker_ready
from cotune.tuner.spec.settings import ServiceSettings
from cotune.worker.app import TASK_RUN_TICKET, app
from cotune.worker.execution import WorkerContext, run_ticket

log = logging.getLogger("cotune.worker")
_ctx: WorkerContext | None = None


def _context() -> WorkerContext:
    global _ctx
    if _ctx is None:
        _ctx = WorkerContext.open(ServiceSettings.from_env())
    return _ctx


@worker_process_init.connect
def _open(**_: object) -> None:
    from cotune.tuner.spec.redact import install_log_redaction

    install_log_redaction(ServiceSettings.from_env().redactor())  # this pool process's log lines too
    _context()  # open storage and start the candidate process before the first ticket arrives


@worker_process_shutdown.connect
def _close(**_: object) -> None:
    if _ctx is not None:
        _ctx.close()


@worker_ready.connect
def _start_reaper(sender=None, **_: object) -> None:
    from cotune.worker.mlflow_sync import start_mlflow_sync
    from cotune.worker.reaper import start_reaper

    hostname = sender.hostname if sender is not None else "worker"
    settings = ServiceSettings.from_env()
    start_reaper(app, settings, hostname)
    start_mlflow_sync(settings, hostname)  # its own thread: an MLflow outage must not slow the reaper


@app.task(name=TASK_RUN_TICKET, bind=True, ignore_result=True)
def run_ticket_task(self, ticket_id: int) -> str:
    outcome = run_ticket(_context(), app, int(ticket_id), self.request.hostname or "worker")
    log.info("ticket %s: %s", ticket_id, outcome)
    return outcome
