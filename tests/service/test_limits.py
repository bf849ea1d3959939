"""Every input is bounded and no request chooses a server-side resource: bodies, problem counts, trials,
numbers, hardware, and the spec fields that name a storage or a tracking server. Each refusal is a 4xx
naming the field or the limit, comes at once, and leaves nothing behind (no job, no file, no connection).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cotune.tuner.device.profiles import queue_name
from cotune.tuner.service.api import create_app
from cotune.tuner.spec.settings import ServiceSettings, SettingsError
from cotune.tuner.store.jobs import JobStore
from fastapi.testclient import TestClient

from tests.service.conftest import API_TOKEN, noop_spec

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
YAML = {**AUTH, "Content-Type": "application/yaml"}


@pytest.fixture(scope="module")
def env(redis_server, pg_url, mlflow_server) -> dict[str, str]:
    return {
        "COTUNE_STORAGE": pg_url,
        "COTUNE_BROKER_URL": redis_server.url,
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "COTUNE_API_TOKEN": API_TOKEN,
        "COTUNE_API_SUBMIT_PROCS": "1",
    }


@pytest.fixture(scope="module")
def client(env) -> Iterator[TestClient]:
    with TestClient(create_app(ServiceSettings.from_env(env))) as c:
        yield c


@pytest.fixture
def no_new_job(env) -> Iterator[None]:
    """The test's refusals record no job (and so make no study, run or ticket)."""
    store = JobStore(env["COTUNE_STORAGE"])
    before = {j["id"] for j in store.jobs(1000)}
    yield
    assert {j["id"] for j in store.jobs(1000)} == before, "a refused submit recorded a job"


class Listener:
    """A TCP port that counts the connections made to it, standing in for a host a spec names."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


def messages(r) -> str:
    return json.dumps(r.json()["detail"])


def test_a_body_over_the_limit_is_413(client, no_new_job):
    big = b"name: x\n" + b"#" * 10_000_000
    r = client.post("/jobs", content=big, headers=YAML)
    assert r.status_code == 413 and "1,000,000 bytes" in r.json()["detail"]
    # without a Content-Length (chunked), the limit holds while the body streams in
    r = client.post("/jobs", content=(b"#" * 65536 for _ in range(40)), headers=YAML)
    assert r.status_code == 413


def test_a_short_spec_that_expands_past_the_cap_is_refused_at_once(client, no_new_job):
    # 316 bytes, 20 x 20 x 20 = 8,000 problems: counted, never made
    values = "[" + ", ".join(str(16 * i) for i in range(1, 21)) + "]"
    spec = (
        f"name: big\nkernel: c_matmul\nproblems: [{{M: {values}, N: {values}, K: {values}}}]\nbudget: {{trials: 2}}\n"
    )
    r = client.post("/jobs", content=spec, headers=YAML)
    assert r.status_code == 422 and "8,000 problems" in messages(r) and "COTUNE_MAX_PROBLEMS" in messages(r)
    # 4,096 values per dim: 6.9e10 problems, past what any spec may hold (local runs included)
    huge = "[" + ", ".join(str(i) for i in range(1, 4097)) + "]"
    spec = f"name: huge\nkernel: c_matmul\nproblems: [{{M: {huge}, N: {huge}, K: {huge}}}]\nbudget: {{trials: 2}}\n"
    r = client.post("/jobs", content=spec, headers=YAML)
    assert r.status_code == 422 and "more than 100,000" in messages(r)


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"budget": {"trials": 5001}}, ["body"], "COTUNE_MAX_TRIALS_PER_PROBLEM"),
        ({"budget": {"trials": True}}, ["body", "budget", "trials"], "valid integer"),
        ({"budget": {"trials": 1, "wall_time_s": 1e300}}, ["body", "budget", "wall_time_s"], "less than or equal"),
        ({"bench": {"timeout_s": float("inf")}}, ["body", "bench", "timeout_s"], "finite"),
        ({"bench": {"timeout_s": 1e9}}, ["body", "bench", "timeout_s"], "less than or equal"),
        ({"bench": {"timeout_s": 3000}}, ["body"], "COTUNE_TASK_TIME_LIMIT_S"),  # x top_k 3 > the 3,540 s limit
        ({"bench": {"repeats": 10**9}}, ["body", "bench", "repeats"], "less than or equal"),
        ({"problems": [{"sleep_ms": True}]}, ["body", "problems", 0, "sleep_ms"], "valid integer"),
        ({"problems": [{"sleep_ms": 2**40}]}, ["body", "problems"], "positive integer up to"),
        ({"sampler": {"seed": -1}}, ["body", "sampler", "seed"], "greater than or equal"),
        ({"top_k": 10**6}, ["body", "top_k"], "less than or equal"),
    ],
)
def test_numbers_are_finite_and_bounded(client, no_new_job, change, field, says):
    spec = {"name": "bounds", "kernel": "noop", "problems": [{"sleep_ms": 1}], "budget": {"trials": 2}, **change}
    r = client.post("/jobs", content=json.dumps(spec), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert any(e["loc"][: len(field)] == field and says in e["msg"] for e in r.json()["detail"]), r.text


def test_json_infinity_and_yaml_inf_are_refused(client, no_new_job):
    r = client.post(
        "/jobs",
        content='{"name": "inf", "kernel": "noop", "problems": [{"sleep_ms": 1}], "budget": {"trials": 1},'
        ' "bench": {"timeout_s": Infinity}}',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and "finite" in messages(r)
    r = client.post("/jobs", content=noop_spec("inf", 1, 1).replace("timeout_s: 60", "timeout_s: .inf"), headers=YAML)
    assert r.status_code == 422 and "finite" in messages(r)


def test_unknown_hardware_is_422_listing_the_known_queues(client, env, no_new_job):
    broker = redis.Redis.from_url(env["COTUNE_BROKER_URL"])
    r = client.post("/jobs", params={"hardware": "nvidia-made-up"}, content=noop_spec("hw", 1, 1), headers=YAML)
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["query", "hardware"]
    assert "known queues: cpu, nvidia-a100-sxm4-80gb, nvidia-h100-80gb-hbm3" in error["msg"]
    assert broker.llen(queue_name("nvidia-made-up")) == 0
    # an operator names more with COTUNE_HARDWARE
    extra = ServiceSettings.from_env({"COTUNE_HARDWARE": "nvidia-l4, amd-mi300x"})
    assert extra.known_hardware() == [
        "amd-mi300x",
        "cpu",
        "nvidia-a100-sxm4-80gb",
        "nvidia-h100-80gb-hbm3",
        "nvidia-l4",
    ]


def test_the_soft_time_limit_leaves_a_cut_task_time_to_settle():
    """A task cut by the soft limit kills its candidate and fails its trial before the hard limit kills the
    pool process: the gap is a tenth of the limit, at least 5 s and at most a minute."""

    def soft(limit: float) -> float:
        return ServiceSettings(task_time_limit_s=limit).task_soft_time_limit_s

    assert (soft(3600), soft(600), soft(120), soft(20), soft(10)) == (3540, 540, 108, 15, 5)
    with pytest.raises(SettingsError, match=r"COTUNE_TASK_TIME_LIMIT_S=5: must lie between 10 and"):
        ServiceSettings.from_env({"COTUNE_TASK_TIME_LIMIT_S": "5"})


@pytest.mark.parametrize("field", ["mlflow_tracking_uri", "storage"])
def test_a_spec_cannot_choose_where_the_service_connects_or_writes(client, tmp_path, no_new_job, field):
    target = tmp_path / "made-by-request" / "store.db"
    listener = Listener()
    for value in (
        f"sqlite:///{target}",
        f"http://127.0.0.1:{listener.port}",
        f"postgresql://u@127.0.0.1:{listener.port}/x",
    ):
        r = client.post("/jobs", content=noop_spec("where", 1, 1) + f"{field}: {value}\n", headers=YAML)
        assert r.status_code == 422, r.text
        assert f"{field}: the service" in messages(r) and "`cotune tune`" in messages(r)
    assert not target.parent.exists(), "a request made the service create a file"
    assert listener.accepted == 0, "a request made the service connect to a host it named"


def test_bodies_that_are_not_specs_are_422(client, no_new_job):
    aliases = "a: &x [1, 2]\nname: x\nkernel: noop\nproblems: [{sleep_ms: *x}]\nbudget: {trials: 1}\n"
    r = client.post("/jobs", content=aliases, headers=YAML)
    assert r.status_code == 422 and "no YAML aliases" in messages(r)
    r = client.post("/jobs", content=bytes(range(256)), headers=YAML)
    assert r.status_code == 422 and "not UTF-8" in messages(r)
    r = client.post("/jobs", content="[1, 2]", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422 and "must be a mapping" in messages(r)


def test_the_cli_refuses_the_same_in_one_line(service, tmp_path: Path):
    target = tmp_path / "cli-made" / "mlflow.db"
    spec = tmp_path / "spec.yaml"
    spec.write_text(noop_spec("cli-where", 1, 1) + f"mlflow_tracking_uri: sqlite:///{target}\n")
    binary = tmp_path / "spec.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    for path, says in ((spec, "mlflow_tracking_uri: the service logs"), (binary, "not a text file")):
        done = service.cli("submit", str(path))
        assert done.returncode == 1 and says in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not target.parent.exists()
    spec.write_text(noop_spec("cli-where", 1, 1))
    done = service.cli("submit", str(spec), "--hardware", "nvidia-made-up")
    assert done.returncode == 1 and "no queue of this service serves it" in done.stderr
    bad_setting = {**service.env, "COTUNE_LEASE_S": "soon"}
    done = subprocess.run(
        [sys.executable, "-m", "cotune.tuner.cli", "jobs"], env=bad_setting, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "COTUNE_LEASE_S='soon': not a number" in done.stderr
    assert "Traceback" not in done.stderr
