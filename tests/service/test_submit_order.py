"""Submit writes the job record first (``submitting``), then its studies and MLflow parent runs, then queues
its tickets; a submit that fails on the way leaves nothing, and one whose API is killed on the way leaves
a ``submitting`` job that is failed and cleared once an API starts again."""

from __future__ import annotations

import secrets
import threading

import httpx2 as httpx
import redis
import sqlalchemy as sa
from cotune.tuner.device.profiles import CPU_KIND, queue_name
from cotune.tuner.service.api import create_app
from cotune.tuner.spec.settings import ServiceSettings
from cotune.tuner.store.job_tables import jobs, tickets
from cotune.tuner.store.jobs import JobStore
from cotune.tuner.store.studies import open_storage
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from tests.service.conftest import API_TOKEN
from tests.service.stack import free_port, wait_for

AUTH = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/yaml"}


def spec(name: str, problems: int) -> str:
    values = ", ".join(str(v) for v in range(1, problems + 1))
    return f"name: {name}\nkernel: noop\nproblems: [{{sleep_ms: [{values}]}}]\nbudget: {{trials: 1}}\n"


def study_names(storage_url: str) -> set[str]:
    return {s.study_name for s in open_storage(storage_url).get_all_studies()}


def test_a_submit_that_fails_midway_leaves_nothing(service):
    """The submitter's database role may write the job store but only read Optuna's tables: the job record is
    made, then making its studies fails. The client gets an error, and neither the record nor its tickets
    nor a study is left."""
    storage = service.env["COTUNE_STORAGE"]
    store = JobStore(storage)
    jobs_before, studies_before = {j["id"] for j in store.jobs(1000)}, study_names(storage)
    role = f"cotune_no_studies_{secrets.token_hex(3)}"
    admin = sa.create_engine(storage, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        c.execute(sa.text(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"'))
        c.execute(sa.text(f'GRANT ALL ON cotune_jobs, cotune_studies, cotune_tickets TO "{role}"'))
        c.execute(sa.text(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{role}"'))
    as_role = sa.engine.make_url(storage).set(username=role).render_as_string(hide_password=False)
    env = {**service.env, "COTUNE_STORAGE": as_role, "COTUNE_API_SUBMIT_PROCS": "1"}
    try:
        with TestClient(create_app(ServiceSettings.from_env(env))) as client:
            r = client.post("/jobs", content=spec("rollback", 20), headers=AUTH)
        assert r.status_code == 500 and "studies" not in r.text, r.text  # no internals in the body
        assert {j["id"] for j in store.jobs(1000)} == jobs_before, "the failed submit left a job record"
        with store.engine.connect() as c:
            assert not c.execute(sa.select(tickets.c.id).where(tickets.c.job_id.notin_(jobs_before))).all()
        assert study_names(storage) == studies_before, "the failed submit left studies"
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP OWNED BY "{role}"'))
            c.execute(sa.text(f'DROP ROLE "{role}"'))
        admin.dispose()


def test_mlflow_down_at_submit_queues_the_job_with_its_runs_owed(service, monkeypatch):
    """The tracking server is unreachable: the submit goes on without it (201), and the job's studies have no
    parent run yet; the workers' MLflow sync makes them later (tests/service/test_mlflow_outage.py)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the submit process inherits it: fail at once
    env = {**service.env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "COTUNE_API_SUBMIT_PROCS": "1"}
    with TestClient(create_app(ServiceSettings.from_env(env))) as client:
        r = client.post("/jobs", content=spec("no-mlflow", 3), headers=AUTH)
        assert r.status_code == 201, r.text
        record = client.get(f"/jobs/{r.json()['id']}", headers=AUTH).json()
        assert client.delete(f"/jobs/{record['id']}", headers=AUTH).status_code == 200
    assert record["state"] == "queued" and len(record["studies"]) == 3
    assert all(s["mlflow_run_id"] is None and not s["mlflow_synced"] for s in record["studies"])


def test_an_api_killed_mid_submit_leaves_a_job_that_is_failed_and_cleared(service, api_server):
    env = {**service.env, "COTUNE_SUBMIT_STALE_S": "10", "COTUNE_API_SUBMIT_PROCS": "1"}
    storage = env["COTUNE_STORAGE"]
    store = JobStore(storage)
    mlflow = MlflowClient(env["MLFLOW_TRACKING_URI"])
    broker = redis.Redis.from_url(env["COTUNE_BROKER_URL"])
    queued = broker.llen(queue_name(CPU_KIND))
    api = api_server(env)

    def post() -> None:
        try:
            httpx.post(f"{api.url}/jobs", content=spec("killed", 120), headers=AUTH, timeout=300)
        except httpx.HTTPError:
            pass  # the API dies under it

    threading.Thread(target=post, daemon=True).start()
    job = wait_for(lambda: next((j["id"] for j in store.jobs(20) if j["name"] == "killed"), None), 120, "the record")
    assert store.job(job)["state"] == "submitting"  # the record comes first

    def parent_runs(job: str) -> list:
        exp = mlflow.get_experiment_by_name("cotune/killed")
        return [] if exp is None else mlflow.search_runs([exp.experiment_id], f"tags.`cotune.service_job` = '{job}'")

    wait_for(lambda: len(parent_runs(job)) >= 3, 120, "the submit to open MLflow parent runs", interval=0.2)
    api.kill()
    names = {s["name"] for s in store.studies(job)}
    assert store.job(job)["state"] == "submitting" and names & study_names(storage) and parent_runs(job)
    assert broker.llen(queue_name(CPU_KIND)) == queued, "tickets were queued before the submit finished"

    # once nothing has touched the job for COTUNE_SUBMIT_STALE_S, a starting API fails it and clears it
    with store.engine.connect() as c:
        # clock_timestamp(), not now(): now() stands still for the length of a transaction
        age = sa.func.extract("epoch", sa.func.clock_timestamp() - jobs.c.updated_at)
        wait_for(lambda: c.execute(sa.select(age).where(jobs.c.id == job)).scalar() > 10.5, 60, "the job to go stale")
    api_server(env, name="api-again")
    record = wait_for(lambda: (r := store.record(job))["state"] == "failed" and r, 120, "the sweep")
    assert "interrupted" in record["error"]
    wait_for(lambda: not names & study_names(storage), 60, "its studies to be deleted")
    wait_for(lambda: not parent_runs(job), 60, "its MLflow parent runs to be deleted")
    assert {t["state"] for t in service.tickets(job)} == {"cancelled"}
    deleted = mlflow.search_runs(
        [mlflow.get_experiment_by_name("cotune/killed").experiment_id],
        f"tags.`cotune.service_job` = '{job}'",
        run_view_type=3,  # ALL: deleted runs too
    )
    assert deleted and all(r.info.lifecycle_stage == "deleted" for r in deleted)
