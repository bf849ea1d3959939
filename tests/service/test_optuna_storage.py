"""The service's studies are in Optuna's own RDB storage on PostgreSQL: optuna-dashboard lists and draws a
service job's study, and studies an older version left in its journal table are refused until
``cotune migrate-journal`` has moved them, trial for trial."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from cotune.tuner.errors import StorageError
from cotune.tuner.store.studies import open_storage
from optuna.trial import TrialState

from tests.service.conftest import PG_ADMIN, noop_spec, submit, wait_job
from tests.service.stack import free_port, wait_for


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return json.loads(r.read())


def test_optuna_dashboard_lists_and_draws_a_service_job(service, tmp_path, read_only):
    service.start_worker("dash")
    job = submit(service, tmp_path, noop_spec("dashboard", trials=4, sleep_ms=5))
    record = wait_job(service, job)
    (study,) = record["studies"]

    port = free_port()
    dashboard = [str(Path(sys.executable).parent / "optuna-dashboard"), read_only(service.env["COTUNE_STORAGE"])]
    with open(tmp_path / "dashboard.log", "w") as log:
        proc = subprocess.Popen(
            [*dashboard, "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{port}"

        def listed() -> dict | None:
            assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
            try:
                return get_json(f"{base}/api/studies")
            except OSError:
                return None

        studies = wait_for(listed, 60, "optuna-dashboard to answer")["study_summaries"]
        (summary,) = [s for s in studies if s["study_name"] == study["name"]]
        assert summary["directions"] == ["minimize"]
        detail = get_json(f"{base}/api/studies/{summary['study_id']}")
        trials = [t for t in detail["trials"] if t["state"] == "Complete"]
        # the four measured trials, each with its config, its time and cotune's record of it
        assert len(trials) >= 4, detail["trials"]
        assert all(set(p["name"] for p in t["params"]) == {"x", "y"} and t["values"][0] > 0 for t in trials)
        assert all(any(a["key"] == "cotune" for a in t["user_attrs"]) for t in trials)
        # what its charts are drawn from: the search space of every trial, and the best trial
        assert {p["name"] for p in detail["intersection_search_space"]} == {"x", "y"}
        assert detail["best_trials"] and detail["best_trials"][0]["values"] == [min(t["values"][0] for t in trials)]
        attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
        assert attrs["job"] == job  # the study is labelled with the job, as `cotune best` reads it
        with urllib.request.urlopen(f"{base}/dashboard/studies/{summary['study_id']}", timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        # as the role docs/service.md gives it, it cannot delete what it shows
        delete = urllib.request.Request(f"{base}/api/studies/{summary['study_id']}", method="DELETE")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(delete, timeout=10)
        assert study["name"] in {s["study_name"] for s in get_json(f"{base}/api/studies")["study_summaries"]}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def read_only() -> Iterator:
    """A PostgreSQL role that can read a database and nothing more, as docs/service.md has optuna-dashboard
    run; dropped at the end. Returns the database URL as that role."""
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    role = f"cotune_test_ro_{secrets.token_hex(4)}"
    made: list[str] = []

    def grant(url: str) -> str:
        target = sa.engine.make_url(url)
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
            c.execute(sa.text(f'GRANT CONNECT ON DATABASE "{target.database}" TO "{role}"'))
        db = sa.create_engine(target, isolation_level="AUTOCOMMIT")
        with db.connect() as c:
            c.execute(sa.text(f'GRANT USAGE ON SCHEMA public TO "{role}"'))
            c.execute(sa.text(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"'))
        db.dispose()
        made.append(url)
        return target.set(username=role, password=None).render_as_string(hide_password=False)

    yield grant
    for url in made:
        db = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with db.connect() as c:
            c.execute(sa.text(f'DROP OWNED BY "{role}"'))
        db.dispose()
        with admin.connect() as c:
            c.execute(sa.text(f'REVOKE CONNECT ON DATABASE "{sa.engine.make_url(url).database}" FROM "{role}"'))
            c.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
    admin.dispose()


# -- the journal of older versions -------------------------------------------------------------------------

SPEC = "name: old\nkernel: noop\nproblems: [{sleep_ms: [1, 2]}]\nbudget: {trials: 6}\nbench: {warmup: 0, repeats: 1}\n"


@pytest.fixture
def database() -> Iterator[str]:
    """A database of its own: the migration renames a table in it."""
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"cotune_test_journal_{secrets.token_hex(4)}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def write_old_journal(url: str, cpu) -> str:
    """What the service before 2026-12-05 left in its journal: a job of two studies stepped by a worker's
    study session (measured trials, a repeat, one study finished with its best), a config queued and a trial a
    killed worker left RUNNING. Returns the job id."""
    from cotune.tuner.driver import StudySession, study_name
    from cotune.tuner.measure.isolation import CandidateRunner
    from cotune.tuner.measure.registry import get_kernel
    from cotune.tuner.spec.job import parse_spec
    from cotune.tuner.store.jobs import JobStore, new_job_id
    from cotune.tuner.store.journal_migration import LegacyJournalBackend
    from cotune.tuner.store.pg import engine_for
    from cotune.tuner.track.tracker import NullTracker

    journal = optuna.storages.JournalStorage(LegacyJournalBackend(engine_for(url)))
    spec, kernel = parse_spec(SPEC), get_kernel("noop")
    job = new_job_id()
    problems = spec.expand()
    names = [study_name(job, p, cpu) for p in problems]
    rows = [(n, p.to_json(), 6, None) for n, p in zip(names, problems, strict=True)]
    JobStore(url).create_job("old", "cpu", {}, None, rows, None, job_id=job)
    with CandidateRunner() as runner:
        for problem, name in zip(problems, names, strict=True):
            space = kernel.space()
            session = StudySession(spec, kernel, space, problem, cpu, journal, runner, NullTracker(), name, job)
            for _ in range(4):
                session.step_until_measured()
            session.study.enqueue_trial(session.study.trials[0].params)  # a repeat: reuses trial 0's result
            session.step()
        session.finish()  # the second study finished: it has a best config
        session.study.ask(kernel.space().distributions())  # left RUNNING by a killed worker
        session.study.enqueue_trial({"x": 2, "y": 5})  # queued, never asked
    return job


def snapshot(storage) -> dict:
    """Every study as a user of Optuna sees it: directions, attributes, and each trial in full."""
    out = {}
    for s in storage.get_all_studies():
        trials = storage.get_all_trials(s._study_id, deepcopy=False)
        out[s.study_name] = (
            s.directions,
            s.user_attrs,
            [
                (
                    t.number,
                    t.state,
                    t.params,
                    t.distributions,
                    t.values,
                    t.user_attrs,
                    t.system_attrs,
                    t.datetime_start,
                    t.datetime_complete,
                )
                for t in trials
            ],
        )
    return out


def cli(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COTUNE_STORAGE": url}
    return subprocess.run(
        [sys.executable, "-m", "cotune.tuner.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_studies_left_in_the_old_journal_are_refused_until_migrated_trial_for_trial(database, cpu):
    from cotune.tuner.store.journal_migration import LegacyJournalBackend
    from cotune.tuner.store.pg import engine_for

    job = write_old_journal(database, cpu)
    before = snapshot(optuna.storages.JournalStorage(LegacyJournalBackend(engine_for(database))))
    assert len(before) == 2 and sum(len(trials) for *_, trials in before.values()) >= 12

    # every process that would open the storage refuses, in one line naming what to do
    with pytest.raises(StorageError, match=r"still in the journal table .* run `cotune migrate-journal` once"):
        open_storage(database)
    refused = cli(database, "best", job)
    assert refused.returncode == 1 and "cotune migrate-journal" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) <= 3, refused.stderr

    done = cli(database, "migrate-journal")
    assert done.returncode == 0, done.stderr
    trials = sum(len(t) for *_, t in before.values())
    assert f"migrated 2 studies ({trials} trials)" in done.stdout
    assert snapshot(open_storage(database)) == before

    # the migrated job reads back, and a study goes on where it stopped
    best = cli(database, "best", job)
    assert best.returncode == 0, best.stderr
    (entry,) = json.loads(best.stdout)
    assert entry["shape"] == {"sleep_ms": 2} and entry["metrics"]["time_s"] > 0
    (name,) = [n for n, (*_, trials) in before.items() if all(t[1] is not TrialState.WAITING for t in trials)]
    study = optuna.load_study(study_name=name, storage=open_storage(database))
    assert study.ask().number == len(before[name][2])

    again = cli(database, "migrate-journal")
    assert again.returncode == 0 and "nothing to migrate" in again.stdout
    with engine_for(database).connect() as c:
        kept = c.execute(sa.text("SELECT tablename FROM pg_tables WHERE tablename LIKE 'cotune_optuna_journal%'"))
        assert [t for (t,) in kept][0].startswith("cotune_optuna_journal_migrated_")


def test_a_migration_refuses_a_journal_still_being_written(database):
    """An older worker still running appends while the studies are copied: the journal stays, and the next
    run (once it is stopped) migrates everything."""
    from cotune.tuner.store import journal_migration
    from cotune.tuner.store.pg import engine_for

    engine = engine_for(database)
    journal = optuna.storages.JournalStorage(journal_migration.LegacyJournalBackend(engine))
    optuna.create_study(storage=journal, study_name="busy").enqueue_trial({"x": 1})
    with pytest.raises(StorageError, match="a worker or API of the older version is still running"):
        journal_migration._retire(engine, journal_migration._last_entry(engine) - 1)  # as if one entry came late
    assert journal_migration.has_journal(engine)
    report = journal_migration.migrate_journal(database)
    assert (report.studies, report.trials) == (1, 1) and not journal_migration.has_journal(engine)
