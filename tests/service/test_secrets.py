"""No credential leaves the service: a stack whose every part has a secret (a PostgreSQL URL with a
password, a Redis with ``requirepass``, an MLflow URL with a password, a write and a read token) runs jobs
through a real ``cotune api`` process and real ``cotune worker`` processes, and then every response body,
every row of the database (job records, tickets, Optuna's tables), every MLflow run's params and tags, the
MLflow store's file, the API's and the workers' logs and the CLI's output are searched for each secret.

PostgreSQL here trusts local connections, so it accepts any password: the URL carries one all the same,
exactly as a production URL would.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
import sqlalchemy as sa

from tests.service.conftest import noop_spec
from tests.service.stack import ApiServer, MlflowServer, RedisServer, Service, TcpProxy, free_port, wait_for

YAML = {"Content-Type": "application/yaml"}
TERMINAL = ("succeeded", "failed", "cancelled")


class Secrets(dict):
    """name -> secret value; a failure message names the secret, never shows it."""

    def leaks(self, text: str) -> list[str]:
        return [name for name, value in self.items() if value in text]


class Leaks:
    """Everything the service showed anyone, with where it came from, to be searched at the end."""

    def __init__(self, secret: Secrets) -> None:
        self.secret = secret
        self.seen: list[tuple[str, str]] = []

    def add(self, where: str, text: str) -> str:
        self.seen.append((where, text))
        return text

    def response(self, r: httpx.Response) -> httpx.Response:
        self.add(f"{r.request.method} {r.request.url.path} -> {r.status_code}", r.text)
        return r

    def assert_none(self, *files: Path) -> None:
        found = [(where, self.secret.leaks(text)) for where, text in self.seen]
        found += [(str(f), self.secret.leaks(f.read_bytes().decode(errors="replace"))) for f in files if f.exists()]
        found = [(where, names) for where, names in found if names]
        assert not found, f"secrets found (names only): {found}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_url) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("secure")
    secret = Secrets(
        pg_password=f"pg-{secrets.token_urlsafe(16)}",
        redis_password=f"redis-{secrets.token_urlsafe(16)}",
        mlflow_password=f"mlflow-{secrets.token_urlsafe(16)}",
        api_token=secrets.token_urlsafe(32),
        read_token=secrets.token_urlsafe(32),
    )
    redis = RedisServer(work, password=secret["redis_password"])
    redis.start()
    mlflow = MlflowServer(work)
    storage = sa.engine.make_url(pg_url).set(password=secret["pg_password"])
    env = {
        **os.environ,
        "COTUNE_STORAGE": storage.render_as_string(hide_password=False),
        "COTUNE_BROKER_URL": redis.url,
        "MLFLOW_TRACKING_URI": mlflow.url.replace("http://", f"http://cotune:{secret['mlflow_password']}@"),
        "COTUNE_API_TOKEN": secret["api_token"],
        "COTUNE_API_READ_TOKEN": secret["read_token"],
        "COTUNE_LEASE_S": "10",
        "COTUNE_REAP_INTERVAL_S": "1",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",  # a tracking server that is away fails at once, not in 7 s
        "PYTHONUNBUFFERED": "1",
    }
    api = None
    try:
        api = ApiServer(env, work)
        yield {"env": env, "work": work, "secret": secret, "api": api, "redis": redis, "mlflow": mlflow}
    finally:
        if api is not None:
            api.stop()
        mlflow.stop()
        redis.kill()


def client(stack: dict, token: str | None = "api_token") -> httpx.Client:
    headers = {"Authorization": f"Bearer {stack['secret'][token]}"} if token else {}
    return httpx.Client(base_url=stack["api"].url, headers=headers, timeout=120)


def wait_job(http: httpx.Client, job: str) -> dict:
    return wait_for(
        lambda: (r := http.get(f"/jobs/{job}").json())["state"] in TERMINAL and r, 180, f"job {job} to end", 0.5
    )


def database_text(url: str) -> str:
    """Every row of every table of the service's database, as text: job records, tickets, Optuna's tables."""
    engine = sa.create_engine(url)
    out = []
    with engine.connect() as c:
        for table in sa.inspect(engine).get_table_names():
            out += [repr(tuple(row)) for row in c.execute(sa.text(f'SELECT * FROM "{table}"'))]
    engine.dispose()
    return "\n".join(out)


def mlflow_text(url: str) -> str:
    """The params and tags of every run of every experiment of the tracking server."""
    from mlflow import MlflowClient

    client = MlflowClient(url)
    out = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=5000):
            out.append(json.dumps({"params": run.data.params, "tags": run.data.tags}))
    return "\n".join(out)


def cli(stack: dict, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cotune.tuner.cli", *args],
        env=env or stack["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_job_and_its_errors_leave_no_secret_anywhere(stack, tmp_path):
    secret, env = stack["secret"], stack["env"]
    leaks = Leaks(secret)
    svc = Service(env, tmp_path, stack["redis"])
    try:
        with client(stack) as http, client(stack, "read_token") as reader:
            r = leaks.response(http.post("/jobs", content=noop_spec("secure", trials=3, sleep_ms=5), headers=YAML))
            assert r.status_code == 201, r.text
            job = r.json()["id"]
            assert r.json()["mlflow_setting"] == "MLFLOW_TRACKING_URI"  # the setting's name, not its URL
            # before any trial has finished: 409, and the body names no database
            early = leaks.response(reader.get(f"/jobs/{job}/best"))
            assert early.status_code == 409 and "postgresql" not in early.text

            svc.start_worker("secure-worker")
            record = wait_job(reader, job)
            assert record["state"] == "succeeded", svc.diagnosis(job)
            for path in ("/jobs", f"/jobs/{job}", f"/jobs/{job}/best", f"/jobs/{job}/export"):
                assert leaks.response(reader.get(path)).status_code == 200
            # the read token reads and nothing more
            assert leaks.response(reader.delete(f"/jobs/{job}")).status_code == 403

            # a token in the URL: refused with a hint, and the access log shows it masked
            for param in ("token", "access_token"):
                r = leaks.response(httpx.get(f"{stack['api'].url}/jobs", params={param: secret["api_token"]}))
                assert r.status_code == 401 and "Authorization header" in r.json()["detail"]

            # the CLI: status and best of the service job, best of a job that has no result
            for args in (("status", job, "--json"), ("best", job), ("best", "job-000000000000")):
                done = cli(stack, *args)
                leaks.add(f"cotune {' '.join(args)}", done.stdout + done.stderr)
            assert "Traceback" not in done.stderr and done.returncode == 1

            # the broker goes away: 503 from the API and one line from the CLI, neither with its password
            stack["redis"].kill()
            try:
                down = leaks.response(http.post("/jobs", content=noop_spec("nobroker", 1, 1), headers=YAML))
                assert down.status_code == 503 and "queue (Redis) is unavailable" in down.json()["detail"]
                assert "redis://" not in down.text  # no internal URL, masked or not
                (tmp_path / "spec.yaml").write_text(noop_spec("nobroker", 1, 1))
                done = cli(stack, "submit", str(tmp_path / "spec.yaml"))
                leaks.add("cotune submit (broker down)", done.stdout + done.stderr)
                assert done.returncode == 1 and "cannot reach the broker" in done.stderr
                assert "Traceback" not in done.stderr
            finally:
                stack["redis"].start()

            # a worker whose tracking server is away: whatever it records about that names no password
            svc.stop()
            away = {**env, "MLFLOW_TRACKING_URI": f"http://cotune:{secret['mlflow_password']}@127.0.0.1:{free_port()}"}
            lost = Service(away, tmp_path, stack["redis"])
            lost.start_worker("no-mlflow")
            try:
                r = leaks.response(http.post("/jobs", content=noop_spec("secure-err", 2, 1), headers=YAML))
                failing = r.json()["id"]
                # fails, or (once MLflow is off the critical path) succeeds; either way its record is clean
                leaks.add("record", json.dumps(wait_job(reader, failing)))
                leaks.add("tickets", repr(lost.tickets(failing)))
            finally:
                lost.stop()
    finally:
        svc.stop()

    leaks.add("database", database_text(env["COTUNE_STORAGE"]))
    leaks.add("mlflow runs", mlflow_text(env["MLFLOW_TRACKING_URI"]))
    logs = [stack["api"].log, *tmp_path.glob("*.log")]
    assert len(logs) >= 3  # the API and both workers
    leaks.assert_none(*logs, stack["mlflow"].root / "mlflow.db")
    api_log = stack["api"].log.read_text()
    assert "token=***" in api_log and "access_token=***" in api_log  # the refused requests were logged, masked


def test_a_postgresql_outage_is_503_and_logs_no_password(stack, tmp_path):
    """The database drops every connection and refuses new ones for a while: reads and submits answer 503
    with a fixed sentence (never a 500, never the URL), and the API serves again once it is back."""
    secret = stack["secret"]
    proxy = TcpProxy(5432)
    url = sa.engine.make_url(stack["env"]["COTUNE_STORAGE"]).set(port=proxy.port)
    env = {**stack["env"], "COTUNE_STORAGE": url.render_as_string(hide_password=False)}
    api = ApiServer(env, tmp_path, name="api-outage")
    leaks = Leaks(secret)
    try:
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {secret['api_token']}"}) as http:
            assert leaks.response(http.get("/jobs")).status_code == 200
            proxy.stop()
            for _ in range(3):
                r = leaks.response(http.get("/jobs"))
                assert r.status_code == 503 and r.json()["detail"].startswith("the service's storage (PostgreSQL)")
            r = leaks.response(http.post("/jobs", content=noop_spec("pgdown", 1, 1), headers=YAML, timeout=120))
            assert r.status_code == 503, r.text
            proxy.start()
            wait_for(lambda: http.get("/jobs").status_code == 200, 60, "the API to read again")
    finally:
        proxy.stop()
        api.stop()
    log = api.log.read_text()
    assert "job store unavailable" in log  # the outage was logged ...
    leaks.assert_none(api.log)  # ... without the password


def test_query_token_is_refused_even_when_right(stack):
    """A token in the URL is refused with a hint, also beside a valid header: a URL ends up in logs."""
    with httpx.Client(base_url=stack["api"].url, timeout=60) as anon, client(stack, "read_token") as reader:
        for path in ("/jobs", "/jobs/job-000000000000"):
            assert anon.get(path).status_code == 401
        for http in (anon, reader):
            r = http.get("/jobs", params={"API_KEY": stack["secret"]["read_token"]})
            assert r.status_code == 401 and "Authorization header" in r.json()["detail"]
            assert stack["secret"]["read_token"] not in r.text
