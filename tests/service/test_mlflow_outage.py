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
