"""What the service costs and how it scales, on this machine, with real workers.

1. Shared storage: ask + attribute + tell per trial on each Optuna storage the service could use (PostgreSQL
   with Optuna's RDBStorage, cotune's former journal table on PostgreSQL, Optuna's journal on Redis) and on
   local SQLite, first over ``--trials`` trials, then again once the study holds ``--read-trials``; and what
   reading the studies back costs: a fresh storage object (a new process, or each ``/best`` request while the
   service replayed its journal on every open) and a repeat read on the same object; then what
   ``cotune migrate-journal`` takes to move the journal's study into Optuna's tables.
2. Orchestration overhead per trial, like with like: the same no-op job (``noop`` kernel sleeping 1 ms) run
   locally on the service's own stores (``tune_job`` on the same PostgreSQL storage, logging to the same
   MLflow server) and through the service (Celery on Redis, one worker). Overhead = service time per trial -
   that local time per trial, so the storage and the tracking server are not part of it. ``cotune tune``'s
   defaults (SQLite + an MLflow SQLite file) are measured too, for reference.
3. Scaling: trials/s with 1, 2 and 4 workers on a kernel that sleeps 200 ms per trial (so 2 cores are
   not the limit), measured between the first and the last finished trial; fresh workers for each run, the
   median of ``--repeats`` runs.

Needs PostgreSQL on 127.0.0.1:5432 and a redis-server binary; starts its own Redis, MLflow server and workers.

    python bench/service.py [--trials 200] [--read-trials 2000] [--scale-trials 96] [--repeats 3]
        [--out bench/results/service.json]
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


def _ask_tell(study, trials: int) -> float:
    """Seconds per ask + one user attribute + tell, as a trial of the driver writes them."""
    import optuna

    dist = {"x": optuna.distributions.IntDistribution(1, 1 << 20), "y": optuna.distributions.IntDistribution(0, 15)}
    start = time.perf_counter()
    for _ in range(trials):
        trial = study.ask(dist)
        trial.set_user_attr("cotune", {"status": "ok"})
        study.tell(trial, 0.0)
    return (time.perf_counter() - start) / max(trials, 1)


def _read_back(make) -> tuple[float, float]:
    """Seconds to list every study with its attributes from a fresh storage object, then again from it."""
    start = time.perf_counter()
    storage = make()
    storage.get_all_studies()
    fresh = time.perf_counter() - start
    start = time.perf_counter()
    storage.get_all_studies()
    return fresh, time.perf_counter() - start


def storage_costs(redis_url: str, pg_url: str, work: Path, trials: int, read_trials: int) -> list[dict]:
    """Each storage in a database (or Redis db, or file) of its own, so that one's size does not slow another."""
    import optuna
    from cotune.tuner.store.pg import engine_for

    try:
        from cotune.tuner.store.journal_migration import LegacyJournalBackend
    except ImportError:  # a checkout from before 2026-12-05, measured for the before/after comparison
        from cotune.tuner.store.pg_journal import PostgresJournalBackend as LegacyJournalBackend
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalRedisBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal_url, rdb_url = (_new_database(pg_url, suffix) for suffix in ("journal", "rdb"))
    backends = {
        "postgresql, Optuna RDBStorage": lambda: RDBStorage(rdb_url),
        "postgresql, cotune journal table (the service's storage before 2026-12-05)": lambda: JournalStorage(
            LegacyJournalBackend(engine_for(journal_url))
        ),
        "redis, Optuna journal": lambda: JournalStorage(JournalRedisBackend(redis_url)),
        "sqlite, Optuna RDBStorage (local only)": lambda: RDBStorage(f"sqlite:///{work}/storage-bench.db"),
    }
    out = []
    for name, make in backends.items():
        study = optuna.create_study(
            storage=make(), study_name=f"bench-{secrets.token_hex(3)}", sampler=optuna.samplers.RandomSampler(0)
        )
        first = _ask_tell(study, trials)
        _ask_tell(study, max(0, read_trials - 2 * trials))
        late = _ask_tell(study, trials) if read_trials >= 2 * trials else None
        fresh, again = _read_back(make)
        row = {
            "storage": name,
            "ask_tell_ms": round(first * 1e3, 2),
            "ask_tell_trials": trials,
            "trials_in_study_at_end": len(study.get_trials(deepcopy=False)),
            "ask_tell_ms_last": None if late is None else round(late * 1e3, 2),
            "fresh_open_and_list_ms": round(fresh * 1e3, 1),
            "repeat_list_ms": round(again * 1e3, 1),
        }
        out.append(row)
        print(f"  {name}: {row}", flush=True)
    return out


def best_read(storage_url: str, job: str, repeats: int = 5) -> dict:
    """What ``GET /jobs/{id}/best`` costs in the API process: the export of a finished service job, read
    ``repeats`` times in a row in this process (the first read opens the storage)."""
    from cotune.tuner.export.build import build_export
    from cotune.tuner.store.studies import open_storage

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        build_export(storage_url, job)
        times.append(time.perf_counter() - start)
    storage = open_storage(storage_url)
    studies = storage.get_all_studies()
    out = {
        "first_ms": round(times[0] * 1e3, 1),
        "median_ms": round(sorted(times)[len(times) // 2] * 1e3, 1),
        "repeats": repeats,
        "studies_in_storage": len(studies),
        "trials_in_storage": sum(len(storage.get_all_trials(s._study_id, deepcopy=False)) for s in studies),
    }
    print(f"  /best: {out}", flush=True)
    return out


def migration_cost(pg_url: str) -> dict | None:
    """``cotune migrate-journal``'s work on the journal database of step 1 (one study of ``--read-trials``)."""
    try:
        from cotune.tuner.store.journal_migration import migrate_journal
    except ImportError:  # a checkout from before 2026-12-05 has nothing to migrate to
        return None
    report = migrate_journal(_sibling(pg_url, "journal"))
    out = {"studies": report.studies, "trials": report.trials, "seconds": round(report.seconds, 2)}
    print(f"  migrate-journal: {out}", flush=True)
    return out


def _sibling(pg_url: str, suffix: str) -> str:
    url = sa.engine.make_url(pg_url)
    return url.set(database=f"{url.database}_{suffix}").render_as_string(hide_password=False)


def _new_database(pg_url: str, suffix: str) -> str:
    url = sa.engine.make_url(_sibling(pg_url, suffix))
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
    admin.dispose()
    return url.render_as_string(hide_password=False)


def local_per_trial(storage_url: str, mlflow_uri: str, trials: int, name: str) -> float:
    from cotune.tuner.device.profiles import detect
    from cotune.tuner.driver import tune_job
    from cotune.tuner.spec.job import parse_spec
    from cotune.tuner.track.mlflow_tracker import MlflowTracker

    spec = parse_spec(spec_text(name, trials, 1))
    stamps: list[float] = []
    tune_job(spec, storage_url, detect(), MlflowTracker(mlflow_uri), lambda p: stamps.append(time.perf_counter()))
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
    ap.add_argument("--read-trials", type=int, default=2000, help="trials in each storage's study when read back")
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
        "commit": _commit(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }
    try:
        from cotune.tuner.store.studies import open_storage

        result["service_storage"] = type(open_storage(pg_url)).__name__
        print(f"storage: ask + tell per trial (the service's: {result['service_storage']})", flush=True)
        result["storage"] = storage_costs(redis.url.replace("/0", "/1"), pg_url, work, args.trials, args.read_trials)
        result["migration"] = migration_cost(pg_url)
        local_sqlite = local_per_trial(
            f"sqlite:///{work}/local-optuna.db", f"sqlite:///{work}/local-mlflow.db", args.trials, "local-sqlite"
        )
        local = local_per_trial(pg_url, mlflow.url, args.trials, "local-service-stores")
        print(f"local: {local * 1e3:.1f} ms per trial ({local_sqlite * 1e3:.1f} on SQLite)", flush=True)
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
            result["best_read"] = best_read(pg_url, svc["job"])
            result["overhead"] = {
                "trials": args.trials,
                "storage": result["service_storage"],
                "local_sqlite_per_trial_ms": round(local_sqlite * 1e3, 2),
                "local_service_stores_per_trial_ms": round(local * 1e3, 2),
                "service_per_trial_ms": svc["per_trial_ms"],
                # like with like: the same storage and tracking server on both sides
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
            for name in (db, f"{db}_journal", f"{db}_rdb"):
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _commit() -> str | None:
    import subprocess

    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or None


if __name__ == "__main__":
    main()
