"""The REST API against the real service: auth, spec errors naming the field, and a full round trip."""

from __future__ import annotations

import time

import pytest
import redis
from cotune.tuner.device.profiles import CPU_KIND, queue_name
from cotune.tuner.service.api import create_app
from cotune.tuner.spec.settings import ServiceSettings
from fastapi.testclient import TestClient

from tests.service.conftest import API_TOKEN, noop_spec
from tests.service.stack import wait_for


@pytest.fixture
def client(service):
    settings = ServiceSettings.from_env(service.env)
    with TestClient(create_app(settings)) as c:
        yield c


AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
YAML = {"Content-Type": "application/yaml"}


def test_writes_and_reads_need_the_token(client):
    spec = noop_spec("api-auth", trials=1, sleep_ms=1)
    assert client.post("/jobs", content=spec, headers=YAML).status_code == 401
    wrong = {"Authorization": "Bearer nope", **YAML}
    assert client.post("/jobs", content=spec, headers=wrong).status_code == 401
    assert client.delete("/jobs/job-000000000000").status_code == 401
    assert client.get("/jobs").status_code == 401
    assert client.get("/jobs/job-000000000000", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/jobs", headers=AUTH).status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "cotune"


def test_bad_spec_is_422_naming_the_field(client):
    bad = noop_spec("api-bad", trials=1, sleep_ms=1).replace("trials: 1", "trials: -3")
    r = client.post("/jobs", content=bad, headers={**AUTH, **YAML})
    assert r.status_code == 422
    assert ["body", "budget", "trials"] in [e["loc"] for e in r.json()["detail"]]
    r = client.post(
        "/jobs", json={"name": "x", "kernel": "rm -rf /", "problems": [{"n": 1}], "budget": {"trials": 1}}, headers=AUTH
    )
    assert r.status_code == 422
    assert any(e["loc"] == ["body", "kernel"] and "unknown kernel" in e["msg"] for e in r.json()["detail"])
    r = client.post("/jobs", content="name: [unclosed", headers={**AUTH, **YAML})
    assert r.status_code == 422


def test_round_trip_submit_best_export(service, client):
    service.start_worker("api-worker")
    r = client.post("/jobs", content=noop_spec("api-trip", trials=4, sleep_ms=20), headers={**AUTH, **YAML})
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    assert client.get(f"/jobs/{job}/best", headers=AUTH).status_code == 409  # nothing finished yet
    deadline = time.monotonic() + 120
    while (record := client.get(f"/jobs/{job}", headers=AUTH).json())["state"] not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, record
        time.sleep(0.5)
    assert record["state"] == "succeeded" and record["trials"]["finished"] == 4
    assert job in [j["id"] for j in client.get("/jobs", headers=AUTH).json()]
    best = client.get(f"/jobs/{job}/best", headers=AUTH).json()
    assert best[0]["kernel"] == "noop" and set(best[0]["config"]) == {"x", "y"}
    export = client.get(f"/jobs/{job}/export", params={"format": "cotune"}, headers=AUTH).json()
    assert export["schema_version"] == 1 and export["entries"][0]["config"] == best[0]["config"]
    assert client.get(f"/jobs/{job}/export", params={"format": "nonsense"}, headers=AUTH).status_code == 422
    # serving formats that do not apply to this kernel say so (the files themselves: tests/test_exporters.py)
    not_moe = client.get(f"/jobs/{job}/export", params={"format": "vllm"}, headers=AUTH)
    assert not_moe.status_code == 409 and "no fused_moe results" in not_moe.json()["detail"]
    assert client.get(f"/jobs/{job}/export", params={"format": "autotune"}, headers=AUTH).status_code == 409
    assert client.get("/jobs/job-ffffffffffff", headers=AUTH).status_code == 404


def test_cancel_drops_pending_trials(service, client):
    broker = redis.Redis.from_url(service.env["COTUNE_BROKER_URL"])
    queue = queue_name(CPU_KIND)
    queued = broker.llen(queue)
    # more trials than the noop space's 21 x 16 configs, each its own program: one ticket per program
    r = client.post("/jobs", content=noop_spec("api-cancel", trials=500, sleep_ms=1), headers={**AUTH, **YAML})
    job = r.json()["id"]
    assert r.json()["trials"]["requested"] == 336
    # the tickets go to the broker of the server's settings (not to whatever the test process's env names)
    assert broker.llen(queue) - queued == 336
    r = client.delete(f"/jobs/{job}", headers=AUTH)  # no worker is running: every trial is still pending
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert r.json()["trials"]["pending"] == 0 and r.json()["trials"]["skipped_by"] == {"cancelled": 336}
    service.start_worker("late")  # a worker that now receives the queued messages runs none of them
    # wait until it has taken every message of the job off the queue (each delivery finds its ticket cancelled)
    wait_for(lambda: broker.llen(queue) <= queued, 120, "the late worker to drain the queue", interval=0.5)
    record = client.get(f"/jobs/{job}", headers=AUTH).json()
    assert record["state"] == "cancelled" and record["trials"]["finished"] == 0 and record["trials"]["running"] == 0
    assert {t["state"] for t in service.tickets(job)} == {"cancelled"}
