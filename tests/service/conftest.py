"""Real services for the service tests: a private Redis (so it can be restarted), a fresh PostgreSQL
database, an MLflow tracking server, and real ``cotune worker`` processes.

PostgreSQL must be running on 127.0.0.1:5432 (``.ci/run`` starts it); everything else is started here.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from tests.service.stack import ApiServer, MlflowServer, RedisServer, Service

# The API refuses to start with a token under 32 characters; these are the test stack's.
API_TOKEN = "cotune-test-write-token-0123456789abcdef"
READ_TOKEN = "cotune-test-read-token-0123456789abcdef"
PG_ADMIN = os.environ.get("COTUNE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN} (start it; .ci/run does): {exc}")
    name = f"cotune_test_{secrets.token_hex(4)}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield str(sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False))
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


@pytest.fixture
def service(tmp_path, redis_server, pg_url, mlflow_server) -> Iterator[Service]:
    env = {
        **os.environ,
        "COTUNE_STORAGE": pg_url,
        "COTUNE_BROKER_URL": redis_server.url,
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        # A lease long enough that a worker starved of CPU for seconds on a loaded 2-core machine keeps its
        # trial (its heartbeat renews every lease/3); the kill tests wait for it to run out.
        "COTUNE_LEASE_S": "10",
        "COTUNE_REAP_INTERVAL_S": "1",
        "COTUNE_API_TOKEN": API_TOKEN,
        "PYTHONUNBUFFERED": "1",
    }
    svc = Service(env, tmp_path, redis_server, mlflow_log=mlflow_server.root / "server.log")
    yield svc
    svc.stop()


@pytest.fixture
def api_server(tmp_path) -> Iterator[Callable[..., ApiServer]]:
    """Start real ``cotune api`` processes (``api_server(env, *args, name=...)``); each is stopped at the
    end of the test, also when an assertion failed before the test could stop it."""
    started: list[ApiServer] = []

    def start(env: dict[str, str], *args: str, name: str = "api") -> ApiServer:
        started.append(ApiServer(env, tmp_path, *args, name=name))
        return started[-1]

    yield start
    for api in started:
        api.stop()


def noop_spec(name: str, trials: int, sleep_ms: int) -> str:
    return (
        f"name: {name}\nkernel: noop\nproblems: [{{sleep_ms: {sleep_ms}}}]\n"
        f"budget: {{trials: {trials}}}\ntop_k: 1\n"
        "bench: {warmup: 0, repeats: 1, remeasure_repeats: 2, timeout_s: 60}\n"
    )


WAIT = 180  # seconds a job may take on a loaded 2-core machine; the jobs of these tests need a few


def submit(service: Service, tmp_path, text: str) -> str:
    """Submit a spec with the CLI, as a user would; returns the job id."""
    (tmp_path / "spec.yaml").write_text(text)
    done = service.cli("submit", str(tmp_path / "spec.yaml"))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def wait_job(service: Service, job: str, wait: float = WAIT) -> dict:
    """Wait for a job to succeed (with the CLI's `wait`); its record, or a failure with the diagnosis."""
    done = service.cli("wait", job, "--timeout", str(wait), "--interval", "0.5", timeout=wait + 30)
    record = json.loads(service.cli("status", job, "--json").stdout)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{json.dumps(record['trials'])}\n{service.diagnosis(job)}"
    return record
