"""A tracking server that goes down mid-study: tuning goes on without waiting on it, the study finishes
while it is down, and once it is back ``cotune mlflow-sync`` writes every trial run and the summary it
missed."""

from __future__ import annotations

import subprocess
import sys
import time

from cotune.kernels.noop import Noop
from cotune.tuner.driver import StudySession
from cotune.tuner.measure.isolation import CandidateRunner
from cotune.tuner.spec.job import parse_spec
from cotune.tuner.store.studies import open_storage
from cotune.tuner.track.mlflow_tracker import MlflowTracker
from mlflow import MlflowClient

from tests.service.stack import MlflowServer

SPEC = "name: outage\nkernel: noop\nproblems: [{sleep_ms: 1}]\nbudget: {trials: 6}\nbench: {warmup: 0, repeats: 1}\n"


def test_a_study_outlives_its_tracking_server(tmp_path, cpu):
    server = MlflowServer(tmp_path)
    try:
        spec = parse_spec(SPEC)
        kernel = Noop()
        (problem,) = spec.expand()
        tracker = MlflowTracker(server.url)
        tracker.start_job(spec.name)
        storage_url = f"sqlite:///{tmp_path}/studies.db"
        storage = open_storage(storage_url)
        with CandidateRunner() as runner:
            session = StudySession(spec, kernel, kernel.space(), problem, cpu, storage, runner, tracker, "s")
            session.step_until_measured()
            session.step_until_measured()
            tracker.flush()
            server.stop(close_log=False)
            start = time.monotonic()
            for _ in range(4):
                session.step_until_measured()
            tracker.flush()
            # MLflow's default retries would hold each of the 4 writes for about 4 minutes
            assert time.monotonic() - start < 60
            session.finish()  # the server is still down: the study finishes all the same
            assert session.study.user_attrs["best"]["config"]
        tracker.close()
        server.start()
        sync = [sys.executable, "-m", "cotune.tuner.cli", "mlflow-sync", "outage", "--storage", storage_url]
        done = subprocess.run([*sync, "--mlflow-uri", server.url], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "s: 4 trial run(s) written" in done.stdout
        again = subprocess.run([*sync, "--mlflow-uri", server.url], capture_output=True, text=True, timeout=120)
        assert "s: 0 trial run(s) written" in again.stdout
        unknown = [sys.executable, "-m", "cotune.tuner.cli", "mlflow-sync", "no-such-job", "--storage", storage_url]
        wrong = subprocess.run([*unknown, "--mlflow-uri", server.url], capture_output=True, text=True, timeout=120)
        assert wrong.returncode == 1 and "no studies for job 'no-such-job'" in wrong.stderr + wrong.stdout
        client = MlflowClient(server.url)
        parent = client.get_run(session.run_id)
        runs = client.search_runs(
            [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{session.run_id}'", max_results=100
        )
        assert sorted(int(r.data.tags["cotune.trial"]) for r in runs) == list(range(6))
        assert sum("cotune.backfilled" in r.data.tags for r in runs) == 4
        assert parent.info.status == "FINISHED" and parent.data.params["best.x"]
    finally:
        server.stop()


def test_a_service_job_outlives_its_tracking_server(service, tmp_path):
    """The service with MLflow down before a job, lost in the middle of another, and down when a third is
    cancelled: every job ends as it would have, `status` shows what MLflow is owed, and once the server is
    back the workers write it all, with no manual step: every finished trial's child run exactly once, each
    summary, the cancelled job's parent run KILLED."""
    import json
    import secrets

    import optuna
    from cotune.tuner.measure.trial_record import TRIAL_ATTR
    from cotune.tuner.spec.settings import MLFLOW_SETTING
    from cotune.tuner.store.jobs import JobStore

    from tests.service.conftest import noop_spec, submit, wait_job
    from tests.service.stack import wait_for

    (tmp_path / "mlflow").mkdir()
    server = MlflowServer(tmp_path / "mlflow")
    service.env["MLFLOW_TRACKING_URI"] = server.url
    storage = open_storage(service.env["COTUNE_STORAGE"])
    # Owed studies older than the jobs below, that the sync meets first: one whose parent run this MLflow
    # never had (a tracking store started afresh), one whose Optuna study was deleted by hand. Neither may
    # hold up the others; the first gets a new parent run, the second is dropped.
    store = JobStore(service.env["COTUNE_STORAGE"])
    ghost_spec = parse_spec(SPEC.replace("name: outage", "name: ghosts"))
    (problem,) = ghost_spec.expand()
    ghosts = {f"ghost-{secrets.token_hex(3)}-{kind}": kind for kind in ("no-run", "no-study")}
    rows = [(name, problem.to_json(), 1, "f" * 32) for name in ghosts]
    ghost_job, _ = store.create_job("ghosts", "cpu", ghost_spec.model_dump(mode="json"), MLFLOW_SETTING, rows, None)
    optuna.create_study(study_name=next(n for n, k in ghosts.items() if k == "no-run"), storage=storage)
    store.cancel(ghost_job)

    def record(job: str) -> dict:
        return json.loads(service.cli("status", job, "--json").stdout)

    def done_trials(job: str) -> int:
        return sum(t["state"] == "done" and t["kind"] == "trial" for t in service.tickets(job))

    try:
        server.stop(close_log=False)
        before = submit(service, tmp_path, noop_spec("owed-before", trials=4, sleep_ms=50))  # no MLflow at submit
        service.start_worker("steady")
        first = wait_job(service, before)
        assert first["state"] == "succeeded" and first["trials"]["finished"] == 4, first
        assert first["mlflow"] == {"studies": 1, "synced": 0, "owed": 1}
        assert "1 owed" in service.cli("status", before).stdout

        server.start()
        during = submit(service, tmp_path, noop_spec("owed-during", trials=8, sleep_ms=300))
        wait_for(lambda: done_trials(during) >= 2, 120, "two trials logged while MLflow is up")
        server.stop(close_log=False)
        assert wait_job(service, during)["state"] == "succeeded"
        cancelled = submit(service, tmp_path, noop_spec("owed-cancel", trials=40, sleep_ms=300))
        wait_for(lambda: done_trials(cancelled) >= 1, 120, "a trial of the job to cancel")
        assert service.cli("cancel", cancelled).returncode == 0
        wait_for(lambda: record(cancelled)["mlflow"]["owed"] == 1, 120, "the cancelled job's last trial to end")

        server.start()  # nothing else: the workers' MLflow sync writes what is owed
        jobs = {before: "FINISHED", during: "FINISHED", cancelled: "KILLED"}
        wait_for(lambda: all(record(j)["mlflow"]["synced"] == 1 for j in jobs), 180, "the MLflow sync", 1.0)
        client = MlflowClient(server.url)
        for job, status in jobs.items():
            (study,) = record(job)["studies"]
            parent = client.get_run(study["mlflow_run_id"])
            assert parent.info.status == status, (job, parent.info.status)
            assert parent.data.tags["cotune.service_job"] == job
            runs = client.search_runs(
                [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1000
            )
            loaded = optuna.load_study(study_name=study["name"], storage=storage)
            finished = [t.number for t in loaded.get_trials(deepcopy=False) if TRIAL_ATTR in t.user_attrs]
            assert sorted(int(r.data.tags["cotune.trial"]) for r in runs) == sorted(finished), job
            if status == "FINISHED":
                assert parent.data.params["best.x"] and "time_ms" in parent.data.metrics
        assert "mlflow: complete (1 of 1 studies)" in service.cli("status", during).stdout
        ghost_rows = {s["name"]: s for s in store.studies(ghost_job)}
        assert all(row["mlflow_synced"] for row in ghost_rows.values())
        (no_run,) = [n for n, k in ghosts.items() if k == "no-run"]
        assert client.get_run(ghost_rows[no_run]["mlflow_run_id"]).info.status == "KILLED"
    finally:
        server.stop()
