"""Submits run in a pool of processes of their own, never on the API's event loop or its threads.

Parsing a spec and submitting it (YAML, pydantic, hundreds of Optuna studies and MLflow runs) is CPU work
that holds the GIL for seconds: in a thread of the API process it would stall every other request (a GET
waited 49 s behind one 150-problem submit). In child processes it competes with the API only for the
CPU, which the OS shares fairly. ``COTUNE_API_SUBMIT_PROCS`` submits run at once; up to
``COTUNE_API_MAX_WAITING_SUBMITS`` more wait their turn, and past that a submit is answered 503 at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import yaml
from cotune.tuner.errors import SpecError, StorageError
from cotune.tuner.spec.settings import ServiceSettings
from pydantic import ValidationError

log = logging.getLogger("cotune.api")

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
UNAVAILABLE = "the service's storage (PostgreSQL) is unavailable; try again shortly"


@dataclass(frozen=True)
class Outcome:
    """What a submit came to: ``status`` 201 with ``job_id``, or an HTTP error status with ``detail``."""

    status: int
    job_id: str | None = None
    detail: Any = None


class Busy(Exception):
    """More submits are waiting than the API takes."""


class Submitter:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self._in_flight = 0  # touched on the event loop only

    def start(self) -> None:
        self._pool = ProcessPoolExecutor(
            self.settings.submit_procs,
            mp_context=multiprocessing.get_context("spawn"),  # no inherited sockets, threads or locks
            initializer=_child_init,
            initargs=(self.settings,),
        )
        for _ in range(self.settings.submit_procs):  # import everything now, not in the first user's submit
            self._pool.submit(_warm)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def submit(self, body: bytes, content_type: str, hardware: str) -> Outcome:
        if self._pool is None:
            raise RuntimeError("the submitter is not started")
        if self._in_flight >= self.settings.submit_procs + self.settings.max_waiting_submits:
            raise Busy
        self._in_flight += 1
        try:
            future = self._pool.submit(_submit_in_child, body, content_type, hardware)
            return await asyncio.wrap_future(future)
        finally:
            self._in_flight -= 1


# -- in the child processes --------------------------------------------------------------------------------

# Each child process opens its job store and Celery app once and reuses them for every submit it runs.
_child: dict[str, Any] = {}


def _child_init(settings: ServiceSettings) -> None:
    from cotune.tuner.spec.redact import install_log_redaction

    install_log_redaction(settings.redactor())
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _child["settings"] = settings


def _warm() -> None:
    import cotune.worker.dispatch  # noqa: F401  (optuna, celery, the kernel registry)
    from cotune.tuner.track import mlflow_tracker  # noqa: F401


def _submit_in_child(body: bytes, content_type: str, hardware: str) -> Outcome:
    import sqlalchemy as sa
    from cotune.tuner.spec.job import JobSpec
    from cotune.worker.dispatch import BrokerError, submit
    from mlflow.exceptions import MlflowException

    settings: ServiceSettings = _child["settings"]
    try:
        data = parse_body(body, content_type)
        spec = JobSpec.model_validate(data)
    except SpecError as exc:
        return Outcome(422, detail=[{"loc": ["body"], "msg": str(exc), "type": "parse"}])
    except ValidationError as exc:
        errors = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return Outcome(422, detail=errors)
    try:
        job_id = submit(spec, _celery(settings), _store(settings), settings, hardware)
    except SpecError as exc:
        return Outcome(422, detail=[{"loc": ["body"], "msg": str(exc), "type": "value_error"}])
    except BrokerError as exc:  # the log names the broker (password masked); the client learns what, not where
        log.warning("submit failed: %s", exc)
        return Outcome(503, detail="the service's queue (Redis) is unavailable; try again shortly")
    except (StorageError, MlflowException, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        log.warning("submit failed: %s", str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__)
        if _is_mlflow(exc):
            return Outcome(503, detail="the service's MLflow tracking server is unavailable; try again shortly")
        _child.pop("store", None)  # open it anew next time
        return Outcome(503, detail=UNAVAILABLE)
    except Exception:
        log.exception("submit failed")
        return Outcome(500, detail="the submit failed on the server; its log has the details")
    return Outcome(201, job_id=job_id)


def _is_mlflow(exc: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    # open_client's StorageError names MLflow; the job store's names the job store
    return isinstance(exc, MlflowException) or (isinstance(exc, StorageError) and "MLflow" in str(exc))


def _store(settings: ServiceSettings):  # noqa: ANN202 - JobStore
    if "store" not in _child:
        from cotune.worker.dispatch import open_store

        _child["store"] = open_store(settings)
    return _child["store"]


def _celery(settings: ServiceSettings):  # noqa: ANN202 - Celery
    # from these settings, not the process's environment: a server given its settings must queue its
    # tickets on the broker they name (cotune.worker.app.app reads the environment)
    if "celery" not in _child:
        from cotune.worker.app import make_app

        _child["celery"] = make_app(settings)
    return _child["celery"]


class _NoAliases(yaml.SafeLoader):
    """A spec needs no YAML anchors, and a few aliases can expand to a document of gigabytes."""

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                "in the spec", None, "the service takes no YAML aliases (*name)", event.start_mark
            )
        return super().compose_node(parent, index)


def parse_body(body: bytes, content_type: str) -> Any:
    """The spec mapping of a request body, JSON or YAML by Content-Type; SpecError says what is wrong."""
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise SpecError(f"the body is not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.load(text, Loader=_NoAliases) if content_type in YAML_TYPES else json.loads(text)  # noqa: S506
    except (yaml.YAMLError, ValueError) as exc:
        raise SpecError(f"not valid {content_type}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise SpecError("the spec must be a mapping")
    return data
