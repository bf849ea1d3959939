"""The Celery app, configured for long GPU tasks from :class:`cotune.tuner.spec.settings.ServiceSettings`."""

from __future__ import annotations

from celery import Celery
from cotune.tuner.spec.settings import ServiceSettings

TASK_RUN_TICKET = "cotune.run_ticket"


def make_app(settings: ServiceSettings | None = None) -> Celery:
    s = settings or ServiceSettings.from_env()
    app = Celery("cotune", broker=s.broker_url, backend=s.result_backend, include=["cotune.worker.tasks"])
    app.conf.update(
        # A task is acknowledged when it ends, not when it starts, and a lost worker process puts it back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One GPU, one task: a worker never holds a second message while it measures.
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        # Pool processes start fresh instead of inheriting the parent's database sockets (and CUDA state).
        worker_pool_start_method="spawn",
        task_time_limit=s.task_time_limit_s,
        task_soft_time_limit=s.task_soft_time_limit_s,  # also bounds bench.timeout_s x top_k at submit
        broker_transport_options={"visibility_timeout": s.visibility_timeout_s, "socket_connect_timeout": 3},
        result_backend_transport_options={"visibility_timeout": s.visibility_timeout_s},
        redis_socket_connect_timeout=3,
        broker_connection_timeout=3,
        # Workers ride out a broker restart; they retry the connection for as long as it takes.
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Results live in Optuna and the job store; the result backend only carries the ticket outcome.
        task_ignore_result=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app


app = make_app()
