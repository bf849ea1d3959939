"""The REST API (FastAPI): submit, list, inspect, cancel jobs and fetch their best configs.

Reads are open; writes (POST, DELETE) need ``Authorization: Bearer $COTUNE_API_TOKEN``, and without a
configured token the API accepts no writes at all. A spec names a kernel from the registry and nothing
else that executes: a request cannot make a worker run code of its own.

No ``from __future__ import annotations`` here: FastAPI reads the annotations of the nested route
functions at runtime, and they refer to local dependencies.
"""

import secrets
from enum import StrEnum
from typing import Annotated, Any

import yaml
from cotune.tuner.device.profiles import CPU_KIND
from cotune.tuner.errors import CotuneError, NotFoundError, SpecError
from cotune.tuner.spec.job import JobSpec
from cotune.tuner.spec.settings import ServiceSettings
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")


class ExportFormat(StrEnum):
    COTUNE = "cotune"
    VLLM = "vllm"
    VLLM_LEGACY = "vllm-legacy"
    SGLANG = "sglang"
    TRITON_SERVER = "triton-server"
    AUTOTUNE = "autotune"


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings.from_env()
    api = FastAPI(
        title="cotune",
        version="1",
        description="Submit kernel tuning jobs to cotune's GPU workers and fetch their best configs.",
    )
    bearer = HTTPBearer(auto_error=False)
    state: dict[str, Any] = {}

    def store():
        if "store" not in state:
            from cotune.worker.dispatch import open_store

            state["store"] = open_store(settings)
        return state["store"]

    def celery_app():
        # from these settings, not the process's environment: a server given its settings must queue its
        # tickets on the broker they name (cotune.worker.app.app reads the environment)
        if "celery" not in state:
            from cotune.worker.app import make_app

            state["celery"] = make_app(settings)
        return state["celery"]

    def require_token(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if settings.api_token is None:
            raise HTTPException(403, "this API accepts no writes: COTUNE_API_TOKEN is not set on the server")
        if creds is None or not secrets.compare_digest(creds.credentials.encode(), settings.api_token.encode()):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    def record_or_404(job_id: str) -> dict[str, Any]:
        try:
            return store().record(job_id)
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None

    @api.post("/jobs", status_code=201, dependencies=[Depends(require_token)])
    async def create_job(
        request: Request, hardware: Annotated[str, Query(pattern=r"^[a-z0-9][a-z0-9-]*$")] = CPU_KIND
    ) -> dict[str, Any]:
        """Submit a job spec, as JSON or YAML (by Content-Type). 422 names each invalid field."""
        spec = await _parse_spec(request)
        from cotune.worker.dispatch import BrokerError, submit

        try:
            job_id = submit(spec, celery_app(), store(), settings, hardware)
        except SpecError as exc:
            raise HTTPException(422, [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]) from None
        except BrokerError as exc:
            raise HTTPException(503, str(exc)) from None
        return store().record(job_id)

    @api.get("/jobs")
    def list_jobs(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        return [store().record(j["id"]) for j in store().jobs(limit)]

    @api.get("/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        return record_or_404(job_id)

    @api.get("/jobs/{job_id}/best")
    def get_best(job_id: str) -> list[dict[str, Any]]:
        """The re-measured best config of each finished study (409 while none has finished)."""
        data = _export(job_id, settings, record_or_404)
        return [{k: e[k] for k in ("kernel", "shape", "dtype", "device", "config", "metrics")} for e in data["entries"]]

    @api.get("/jobs/{job_id}/export")
    def get_export(job_id: str, format: ExportFormat = ExportFormat.COTUNE) -> dict[str, Any]:  # noqa: A002
        """The job's best configs: ``cotune``, the versioned JSON cotune.tuner.export.serving reads; any other
        format, the files that ``cotune export --format`` writes, as ``{"format", "files": {relative path: text}}``."""
        data = _export(job_id, settings, record_or_404)
        if format is ExportFormat.COTUNE:
            return data
        return _serving_files(data, format.value)

    @api.delete("/jobs/{job_id}", dependencies=[Depends(require_token)])
    def cancel_job(job_id: str) -> dict[str, Any]:
        """Cancel: pending trials are dropped, trials being measured finish, the job is marked cancelled."""
        record_or_404(job_id)
        store().cancel(job_id)
        return store().record(job_id)

    return api


def _export(job_id: str, settings: ServiceSettings, record_or_404) -> dict[str, Any]:
    from cotune.tuner.export.build import build_export

    record_or_404(job_id)
    try:
        return build_export(settings.storage, job_id)
    except NotFoundError as exc:
        raise HTTPException(409, str(exc)) from None
    except CotuneError as exc:
        raise HTTPException(500, str(exc)) from None


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


async def _parse_spec(request: Request) -> JobSpec:
    body = await request.body()
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    try:
        data = yaml.safe_load(body) if content_type in YAML_TYPES else _json(body)
    except (yaml.YAMLError, ValueError) as exc:
        raise HTTPException(
            422, [{"loc": ["body"], "msg": f"not valid {content_type}: {exc}", "type": "parse"}]
        ) from None
    if not isinstance(data, dict):
        raise HTTPException(422, [{"loc": ["body"], "msg": "the spec must be a mapping", "type": "type_error"}])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        errors = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        raise HTTPException(422, errors) from None


def _json(body: bytes) -> Any:
    import json

    return json.loads(body)
