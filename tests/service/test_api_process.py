"""A real ``cotune api`` process: it will not start open, reads need a token unless it was started with
``--public-reads``, and a read answers while submits are being made."""

from __future__ import annotations

import subprocess
import sys

import httpx2 as httpx
import pytest

from tests.conftest import REPO
from tests.service.conftest import noop_spec
from tests.service.stack import free_port

YAML = {"Content-Type": "application/yaml"}


def start(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Start ``cotune api`` for as long as it takes to refuse (it is killed if it serves instead)."""
    cmd = [sys.executable, "-m", "cotune.tuner.cli", "api", "--port", str(free_port()), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_the_api_refuses_to_start_without_a_long_token(service, api_server):
    env = {**service.env, "COTUNE_API_SUBMIT_PROCS": "1"}
    cases = [
        ({"COTUNE_API_TOKEN": ""}, "COTUNE_API_TOKEN is not set"),
        ({"COTUNE_API_TOKEN": "change-me"}, "COTUNE_API_TOKEN has 9 characters, fewer than 32"),
        ({"COTUNE_API_READ_TOKEN": "reader"}, "COTUNE_API_READ_TOKEN has 6 characters, fewer than 32"),
    ]
    for change, says in cases:
        done = start({**env, **change})
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith("error: refusing to start the API: ") and says in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "--insecure-dev" in done.stderr
    # --insecure-dev starts it anyway, and says so; its short token works like any other
    api = api_server({**env, "COTUNE_API_TOKEN": "change-me"}, "--insecure-dev")
    assert "warning: --insecure-dev: COTUNE_API_TOKEN has 9 characters" in api.log.read_text()
    assert httpx.get(f"{api.url}/jobs", headers={"Authorization": "Bearer change-me"}).status_code == 200
    assert httpx.get(f"{api.url}/jobs").status_code == 401


def test_public_reads_open_reads_only(service, api_server):
    api = api_server({**service.env, "COTUNE_API_SUBMIT_PROCS": "1"}, "--public-reads")
    with httpx.Client(base_url=api.url, timeout=60) as anon:
        assert anon.get("/jobs").status_code == 200
        assert anon.get("/jobs/job-000000000000").status_code == 404
        assert anon.post("/jobs", content=noop_spec("anon", 1, 1), headers=YAML).status_code == 401
        assert anon.delete("/jobs/job-000000000000").status_code == 401


def test_a_read_answers_while_submits_are_made(service, api_server):
    """GET /jobs/{id} while 4 submits of 30 problems run at once (each 30 Optuna studies and MLflow runs).
    Measured at full size (10 x 150) by bench/api_latency.py: bench/results/api_latency.json. The bound
    here is loose, for a loaded 2-core machine; a submit run on the event loop or in the API's threads
    held reads for the length of a submit (seconds to a minute), far past it."""
    sys.path.insert(0, str(REPO / "bench"))
    from api_latency import measure

    api = api_server(service.env)
    result = measure(api.url, service.env["COTUNE_API_TOKEN"], submits=4, problems=30, idle_gets=20)
    assert result["submit_statuses"] == [201], result
    during = result["get_during_submits"]
    assert during["gets"] >= 10, result  # the reads overlapped the submits
    assert during["p99_ms"] < 1500, result


@pytest.fixture(autouse=True)
def _no_leftover_jobs(service):
    """Submits made here are queued for a CPU worker that never comes: cancel them, so that no later test's
    worker picks them up."""
    yield
    from cotune.tuner.store.jobs import JobStore

    store = JobStore(service.env["COTUNE_STORAGE"])
    for job in store.active_jobs():
        store.cancel(job["id"])
