"""How fast the API answers a read while it is busy submitting.

A real ``cotune api`` process (its own Redis, a fresh PostgreSQL database, an MLflow tracking server; no
worker, so nothing but the submits loads the machine) takes ``--submits`` concurrent POSTs of a
``--problems``-problem noop job, each making that many Optuna studies and MLflow parent runs. Meanwhile
one client reads ``GET /jobs/{id}`` of an existing job, one request after the other, and the latency of
every read that started while a submit was in flight is kept. The same reads with no submit running
give the idle baseline.

Needs PostgreSQL on 127.0.0.1:5432 and a redis-server binary.

    python bench/api_latency.py [--submits 10] [--problems 150] [--out bench/results/api_latency.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cotune.tuner.device.profiles import cpu_profile  # noqa: E402

from tests.service.stack import ApiServer, MlflowServer, RedisServer  # noqa: E402

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/"


def spec(name: str, problems: int) -> str:
    values = ", ".join(str(v) for v in range(1, problems + 1))
    return f"name: {name}\nkernel: noop\nproblems: [{{sleep_ms: [{values}]}}]\nbudget: {{trials: 2}}\n"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(latencies: list[float]) -> dict:
    ms = [v * 1e3 for v in latencies]
    return {
        "gets": len(ms),
        "p50_ms": round(quantile(ms, 0.50), 1),
        "p90_ms": round(quantile(ms, 0.90), 1),
        "p99_ms": round(quantile(ms, 0.99), 1),
        "max_ms": round(max(ms), 1),
        "mean_ms": round(statistics.fmean(ms), 1),
    }


def measure(url: str, token: str, submits: int, problems: int, idle_gets: int = 200) -> dict:
    """The GET latencies while ``submits`` submits of ``problems`` problems run, and at idle."""
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=auth, timeout=600) as client:
        r = client.post("/jobs", content=spec("latency-probe", 1), headers={"Content-Type": "application/yaml"})
        r.raise_for_status()
        probe = f"/jobs/{r.json()['id']}"
        idle = []
        for _ in range(idle_gets):
            start = time.perf_counter()
            client.get(probe).raise_for_status()
            idle.append(time.perf_counter() - start)

        in_flight = threading.Event()
        done = threading.Event()
        busy: list[float] = []

        def reader() -> None:
            with httpx.Client(base_url=url, headers=auth, timeout=600) as own:
                while not done.is_set():
                    in_flight.wait()
                    start = time.perf_counter()
                    own.get(probe).raise_for_status()
                    if not done.is_set():
                        busy.append(time.perf_counter() - start)
                    time.sleep(0.02)

        def submit(i: int) -> tuple[int, float]:
            start = time.perf_counter()
            with httpx.Client(base_url=url, headers=auth, timeout=600) as own:
                r = own.post(
                    "/jobs", content=spec(f"latency-{i}", problems), headers={"Content-Type": "application/yaml"}
                )
            return r.status_code, time.perf_counter() - start

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        start = time.perf_counter()
        in_flight.set()
        with ThreadPoolExecutor(submits) as pool:
            results = list(pool.map(submit, range(submits)))
        done.set()
        wall = time.perf_counter() - start
        thread.join()
    return {
        "submits": submits,
        "problems_per_submit": problems,
        "submit_statuses": sorted({s for s, _ in results}),
        "submit_s": {"min": round(min(t for _, t in results), 1), "max": round(max(t for _, t in results), 1)},
        "wall_s": round(wall, 1),
        "get_during_submits": summary(busy),
        "get_idle": summary(idle),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--submits", type=int, default=10)
    ap.add_argument("--problems", type=int, default=150)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "api_latency.json")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cotune-bench-api-"))
    db = f"cotune_bench_{secrets.token_hex(3)}"
    admin = sa.create_engine(PG + "postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{db}"'))
    redis = RedisServer(work)
    redis.start()
    mlflow = MlflowServer(work)
    token = secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "COTUNE_STORAGE": PG + db,
        "COTUNE_BROKER_URL": redis.url,
        "MLFLOW_TRACKING_URI": mlflow.url,
        "COTUNE_API_TOKEN": token,
        "COTUNE_MAX_PROBLEMS": str(max(256, args.problems)),
        "PYTHONUNBUFFERED": "1",
    }
    api = None
    try:
        api = ApiServer(env, work)
        result = {
            "date": dt.date.today().isoformat(),
            "machine": f"{cpu_profile().name}, {os.cpu_count()} cores (shared), no GPU",
            "python": platform.python_version(),
            "command": " ".join(["python bench/api_latency.py", *sys.argv[1:]]),
            # the machine is shared: how busy it was says how to read the numbers
            "load_average_1min_before": round(os.getloadavg()[0], 2),
            **measure(api.url, token, args.submits, args.problems),
            "load_average_1min_after": round(os.getloadavg()[0], 2),
        }
    finally:
        if api is not None:
            api.stop()
        mlflow.stop()
        redis.kill()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
