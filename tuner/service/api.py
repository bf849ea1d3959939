"""The REST API (FastAPI): submit, list, inspect, cancel jobs and fetch their best configs.

Safe to expose (docs/service.md has the whole model):

- every job route needs a bearer token (:mod:`.auth`): writes the write token, reads either token, unless
  the API was started with ``--public-reads``;
- a request names a registered kernel and its shapes and budget, nothing else: no server-side resource
  (storage, MLflow, files) and no code; its body, problem count, trials and numbers are bounded;
- no response carries a credential or an internal URL: error bodies are fixed sentences, records hold
  setting names, and every body passes through the settings' redactor on its way out;
- submits run in child processes (:mod:`.submitter`); reads run in the thread pool. Nothing blocks the
  event loop, so a read answers while submits are being made.

No ``from __future__ import annotations`` here: FastAPI reads the annotations of the nested route
functions at runtime, and they refer to local dependencies.
"""

import logging
import threading
from contextlib import asynccontextmanager
from enum import StrEnum
from typing import Annotated, Any

import sqlalchemy as sa
from cotune.tuner.device.profiles import CPU_KIND
from cotune.tuner.errors import CotuneError, NotFoundError, SpecError, StorageError
from cotune.tuner.service.auth import Access, check_tokens, guard
from cotune.tuner.service.submitter import UNAVAILABLE, Busy, Submitter
from cotune.tuner.spec.settings import ServiceSettings
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("cotune.api")
JobId = Annotated[str, Path(max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*$")]
_STORE_DOWN = (StorageError, sa.exc.OperationalError, sa.exc.InterfaceError)


class ExportFormat(StrEnum):
    COTUNE = "cotune"
    VLLM = "vllm"
    VLLM_LEGACY = "vllm-legacy"
    SGLANG = "sglang"
    TRITON_SERVER = "triton-server"
    AUTOTUNE = "autotune"


def create_app(settings: ServiceSettings | None = None, *, insecure_dev: bool = False) -> FastAPI:
    """The API of these settings; refuses weak tokens unless ``insecure_dev`` (see :func:`.auth.check_tokens`)."""
    settings = settings or ServiceSettings.from_env()
    check_tokens(settings, insecure_dev)
    redact = settings.redactor()
    submitter = Submitter(settings)
    state: dict[str, Any] = {}
    lock = threading.Lock()

    def store():
        with lock:  # reads run in threads; open one store, not one per thread racing
            if "store" not in state:
                from cotune.worker.dispatch import open_store

                state["store"] = open_store(settings)
            return state["store"]

    def sweep() -> None:
        from cotune.worker.dispatch import sweep_abandoned

        try:
            sweep_abandoned(settings, store())
        except Exception as exc:  # the database is away; the workers' reapers sweep too
            log.warning("sweeping half-submitted jobs at start failed: %s", exc)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        submitter.start()
        threading.Thread(target=sweep, name="cotune-sweep", daemon=True).start()
        try:
            yield
        finally:
            submitter.close()

    api = FastAPI(
        title="cotune",
        version="1",
        description="Submit kernel tuning jobs to cotune's GPU workers and fetch their best configs.",
        lifespan=lifespan,
    )
    reader = [Depends(guard(settings, Access.READ))]
    writer = [Depends(guard(settings, Access.WRITE))]

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": redact.value(exc.detail)}, exc.status_code, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": redact.value(jsonable_encoder(exc.errors()))}, 422)

    for kind in _STORE_DOWN:

        @api.exception_handler(kind)
        async def store_down(_: Request, exc: Exception) -> JSONResponse:
            log.warning("job store unavailable: %s", redact(str(exc).strip().splitlines()[0] if str(exc) else ""))
            state.pop("store", None)  # open it anew once the database is back
            return JSONResponse({"detail": UNAVAILABLE}, 503, headers={"Retry-After": "5"})

    def record(job_id: str) -> dict[str, Any]:
        try:
            return redact.value(store().record(job_id))
        except NotFoundError:
            raise HTTPException(404, f"no job {job_id}") from None

    @api.post("/jobs", status_code=201, dependencies=writer)
    async def create_job(
        request: Request,
        hardware: Annotated[str, Query(max_length=100, pattern=r"^[a-z0-9][a-z0-9-]*$")] = CPU_KIND,
    ) -> dict[str, Any]:
        """Submit a job spec, as JSON or YAML (by Content-Type). 422 names each invalid field or limit, 413 a
        body over the limit, 503 a store or broker that is down or too many submits waiting."""
        known = settings.known_hardware()
        if hardware not in known:
            msg = f"unknown hardware {hardware!r}; known queues: {', '.join(known)}"
            raise HTTPException(422, [{"loc": ["query", "hardware"], "msg": msg, "type": "value_error"}])
        body = await _read_body(request, settings.max_body_bytes)
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        try:
            outcome = await submitter.submit(body, content_type, hardware)
        except Busy:
            raise HTTPException(503, "too many submits are waiting; try again shortly", {"Retry-After": "5"}) from None
        if outcome.job_id is None:
            raise HTTPException(outcome.status, outcome.detail)
        return await run_in_threadpool(record, outcome.job_id)

    @api.get("/jobs", dependencies=reader)
    def list_jobs(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        return [record(j["id"]) for j in store().jobs(limit)]

    @api.get("/jobs/{job_id}", dependencies=reader)
    def get_job(job_id: JobId) -> dict[str, Any]:
        return record(job_id)

    @api.get("/jobs/{job_id}/best", dependencies=reader)
    def get_best(job_id: JobId) -> list[dict[str, Any]]:
        """The re-measured best config of each finished study (409 while none has finished)."""
        record(job_id)
        data = _export(job_id, settings)
        keys = ("kernel", "shape", "dtype", "device", "config", "metrics")
        return redact.value([{k: e[k] for k in keys} for e in data["entries"]])

    @api.get("/jobs/{job_id}/export", dependencies=reader)
    def get_export(job_id: JobId, format: ExportFormat = ExportFormat.COTUNE) -> dict[str, Any]:  # noqa: A002
        """The job's best configs: ``cotune``, the versioned JSON cotune.tuner.export.serving reads; any other
        format, the files that ``cotune export --format`` writes, as ``{"format", "files": {relative path: text}}``."""
        record(job_id)
        data = _export(job_id, settings)
        return redact.value(data if format is ExportFormat.COTUNE else _serving_files(data, format.value))

    @api.delete("/jobs/{job_id}", dependencies=writer)
    def cancel_job(job_id: JobId) -> dict[str, Any]:
        """Cancel: pending trials are dropped, trials being measured finish, the job is marked cancelled."""
        record(job_id)
        store().cancel(job_id)
        return record(job_id)

    return api


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes (by its declared length,
    else while it streams in), so an oversized body is never held in memory."""
    too_big = HTTPException(413, f"the body exceeds {limit:,} bytes (COTUNE_API_MAX_BODY_BYTES on the server)")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _export(job_id: str, settings: ServiceSettings) -> dict[str, Any]:
    from cotune.tuner.export.build import build_export

    try:
        return build_export(settings.storage, job_id)
    except StorageError:
        raise  # 503, by the handler
    except NotFoundError:
        # not str(exc): the storage layer's message names the database
        raise HTTPException(409, f"job {job_id} has no finished study with a best config yet") from None
    except CotuneError:
        log.exception("exporting %s failed", job_id)
        raise HTTPException(500, "exporting the job failed; the API's log has the details") from None


def _serving_files(data: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The files ``cotune export --format`` writes, as relative path to text; a binary file (a TorchScript
    model) as base64 under ``binary_files`` (409 when the format does not apply, e.g. vLLM files for a job
    without fused-MoE results)."""
    import base64

    from cotune.tuner.export.formats import get_exporter

    try:
        files = get_exporter(fmt).render(data)
    except SpecError as exc:
        raise HTTPException(409, str(exc)) from None
    out: dict[str, Any] = {"format": fmt, "files": {p: c for p, c in files.items() if isinstance(c, str)}}
    binary = {p: base64.b64encode(c).decode() for p, c in files.items() if isinstance(c, bytes)}
    if binary:
        out["binary_files"] = binary
    return out
