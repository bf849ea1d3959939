"""What the service costs and how it scales, on this machine, with real workers.

1. Shared storage: ask+tell time per trial on PostgreSQL (RDB), Optuna's journal on Redis, and local SQLite.
2. Orchestration overhead per trial: the same no-op job (``noop`` kernel sleeping 1 ms) run locally
   (``tune_job``: SQLite + MLflow SQLite file) and through the service (Celery on Redis, PostgreSQL,
   an MLflow tracking server, one worker). Overhead = service time per trial - local time per trial.
3. Scaling: trials/s with 1, 2 and 4 workers on a kernel that sleeps 200 ms per trial (so 2 cores are
   not the limit), measured between the first and the last finished trial; fresh workers for each run, the
   median of ``--repeats`` runs.

Needs PostgreSQL on 127.0.0.1:5432 and a redis-server binary; starts its own Redis, MLflow server and workers.

    python bench/service.py [--trials 200] [--scale-trials 96] [--repeats 3] [--out bench/results/service.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cotune.tuner.device.profiles import cpu_profile  # noqa: E402
from cotune.tuner.store.job_tables import tickets  # noqa: E402
from cotune.tuner.store.jobs import JobStore  # noqa: E402

from tests.service.stack import MlflowServer, RedisServer, Service, wait_for  # noqa: E402

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/"


def spec_text(name: str, trials: int, sleep_ms: int) -> str:
    return (
        f"name: {name}\nkernel: noop\nproblems: [{{sleep_ms: {sleep_ms}}}]\nbudget: {{trials: {trials}}}\n"
        "sampler: {name: random, seed: 0}\ntop_k: 1\n"
        "bench: {warmup: 0, repeats: 1, remeasure_repeats: 1, timeout_s: 60}\n"
    )


def storage_costs(redis_url: str, pg_url: str, work: Path, trials: int) -> list[dict]:
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalRedisBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = []
    from cotune.tuner.store.studies import open_storage

    backends = {
        "postgresql (journal, cotune's choice)": lambda: open_storage(pg_url),
        "postgresql (RDB)": lambda: RDBStorage(pg_url),
        "redis (journal)": lambda: JournalStorage(JournalRedisBackend(redis_url)),
        "sqlite (RDB, local only)": lambda: RDBStorage(f"sqlite:///{work}/storage-bench.db"),
    }
    for name, make in backends.items():
        storage = make()
        study = optuna.create_study(
            storage=storage, study_name=f"bench-{secrets.token_hex(3)}", sampler=optuna.samplers.RandomSampler(0)
        )
        dist = {"x": optuna.distributions.IntDistribution(1, 1 << 20), "y": optuna.distributions.IntDistribution(0, 15)}
        start = time.perf_counter()
        for _ in range(trials):
            trial = study.ask(dist)
            trial.set_user_attr("cotune", {"status": "ok"})
            study.tell(trial, 0.0)
        per = (time.perf_counter() - start) / trials
        out.append({"storage": name, "trials": trials, "ask_tell_ms": round(per * 1e3, 2)})
        print(f"  {name}: {per * 1e3:.1f} ms per ask + attr + tell", flush=True)
    return out


def local_per_trial(work: Path, trials: int) -> float:
    from cotune.tuner.device.profiles import detect
    from cotune.tuner.driver import tune_job
    from cotune.tuner.spec.job import parse_spec
    from cotune.tuner.track.mlflow_tracker import MlflowTracker

    spec = parse_spec(spec_text("local-overhead", trials, 1))
    stamps: list[float] = []
    tune_job(
        spec,
        f"sqlite:///{work}/local-optuna.db",
        detect(),
        MlflowTracker(f"sqlite:///{work}/local-mlflow.db"),
        lambda p: stamps.append(time.perf_counter()),
    )
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def service_run(service: Service, store: JobStore, name: str, trials: int, sleep_ms: int) -> dict:
    path = service.workdir / f"{name}.yaml"
    path.write_text(spec_text(name, trials, sleep_ms))
    done = service.cli("submit", str(path))
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip()

    def finished() -> list:
        with store.engine.connect() as c:
            rows = c.execute(
                sa.select(tickets.c.finished_at, tickets.c.worker).where(
                    tickets.c.job_id == job, tickets.c.kind == "trial", tickets.c.state == "done"
                )
            ).all()
        return rows if len(rows) == trials else []

    rows = wait_for(finished, 1200, f"job {job}", interval=0.5)
    wait_for(lambda: store.job(job)["state"] == "succeeded", 300, f"job {job} to finalize", interval=0.5)
    times = sorted(r.finished_at.timestamp() for r in rows)
    per_trial = (times[-1] - times[0]) / (len(times) - 1)
    return {
        "job": job,
        "trials": trials,
        "kernel_sleep_ms": sleep_ms,
        "per_trial_ms": round(per_trial * 1e3, 2),
        "trials_per_s": round(1 / per_trial, 3),
        "workers_used": len({r.worker for r in rows}),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=200, help="trials for the storage and overhead runs")
    ap.add_argument("--scale-trials", type=int, default=96, help="trials per scaling run")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=3, help="runs per worker count; the median is reported")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "service.json")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cotune-bench-service-"))
    db = f"cotune_bench_{secrets.token_hex(3)}"
    pg_url = PG + db
    admin = sa.create_engine(PG + "postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{db}"'))
    redis = RedisServer(work)
    redis.start()
    mlflow = MlflowServer(work)
    result: dict = {
        "date": dt.date.today().isoformat(),
        "machine": f"{cpu_profile().name}, {os.cpu_count()} cores, no GPU",
        "python": platform.python_version(),
        "command": "python bench/service.py " + " ".join(sys.argv[1:]),
    }
    try:
        print("storage: ask + tell per trial", flush=True)
        result["storage"] = storage_costs(redis.url.replace("/0", "/1"), pg_url, work, args.trials)

        local = local_per_trial(work, args.trials)
        print(f"local: {local * 1e3:.1f} ms per trial", flush=True)
        env = {
            **os.environ,
            "COTUNE_STORAGE": pg_url,
            "COTUNE_BROKER_URL": redis.url,
            "MLFLOW_TRACKING_URI": mlflow.url,
            "PYTHONUNBUFFERED": "1",
        }
        store = JobStore(pg_url)
        service = Service(env, work, redis)
        try:
            service.start_worker("w0")
            svc = service_run(service, store, "svc-overhead", args.trials, 1)
            print(f"service: {svc['per_trial_ms']:.1f} ms per trial", flush=True)
            result["overhead"] = {
                "trials": args.trials,
                "local_per_trial_ms": round(local * 1e3, 2),
                "service_per_trial_ms": svc["per_trial_ms"],
                "overhead_per_trial_ms": round(svc["per_trial_ms"] - local * 1e3, 2),
            }
            service.stop()
            scaling = []
            for n in [int(w) for w in args.workers.split(",")]:
                runs = []
                for rep in range(args.repeats):
                    # Fresh workers for every run, so each worker count starts from the same state.
                    fleet = Service(env, work, redis)
                    for i in range(n):
                        fleet.start_worker(f"s{n}-{rep}-{i}")
                    try:
                        runs.append(service_run(fleet, store, f"svc-scale-{n}-{rep}", args.scale_trials, 200))
                    finally:
                        fleet.stop()
                runs.sort(key=lambda r: r["trials_per_s"])
                median = runs[len(runs) // 2]
                scaling.append(
                    {
                        "workers": n,
                        "trials": args.scale_trials,
                        "kernel_sleep_ms": 200,
                        "trials_per_s": median["trials_per_s"],
                        "runs_trials_per_s": [r["trials_per_s"] for r in runs],
                        "workers_used": median["workers_used"],
                    }
                )
                print(f"{n} worker(s): {[r['trials_per_s'] for r in runs]} trials/s", flush=True)
            base = scaling[0]["trials_per_s"]
            for run in scaling:
                run["speedup"] = round(run["trials_per_s"] / base, 2)
            result["scaling"] = scaling
        finally:
            service.stop()
    finally:
        mlflow.stop()
        redis.kill()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
