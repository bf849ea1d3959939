"""MLflow is the review copy of the Optuna study: a trial whose child run went missing (the tracking server
was down for its write, or its worker was killed) gets one when the study finishes, and only one."""

from __future__ import annotations

from cotune.kernels.noop import Noop
from cotune.tuner.driver import StudySession
from cotune.tuner.measure.isolation import CandidateRunner
from cotune.tuner.spec.job import parse_spec
from cotune.tuner.store.studies import open_storage
from cotune.tuner.track.mlflow_tracker import MlflowTracker
from mlflow import MlflowClient

SPEC = "name: backfill\nkernel: noop\nproblems: [{sleep_ms: 1}]\nbudget: {trials: 4}\nbench: {warmup: 0, repeats: 1}\n"


def _children(client: MlflowClient, parent: str) -> dict[str, object]:
    exp = client.get_run(parent).info.experiment_id
    runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1000)
    return {r.data.tags["cotune.trial"]: r for r in runs}


def test_a_trial_run_lost_from_mlflow_is_written_again_when_the_study_finishes(tmp_path, cpu):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = parse_spec(SPEC)
    kernel = Noop()
    (problem,) = spec.expand()
    tracker = MlflowTracker(uri)
    tracker.start_job(spec.name)
    storage = open_storage(f"sqlite:///{tmp_path}/studies.db")
    with CandidateRunner() as runner:
        session = StudySession(spec, kernel, kernel.space(), problem, cpu, storage, runner, tracker, "s")
        for _ in range(4):
            session.step_until_measured()
        tracker.flush()
        client = MlflowClient(uri)
        lost = _children(client, session.run_id)["2"]
        client.delete_run(lost.info.run_id)  # as if the server had been down when trial 2 was written
        assert "2" not in _children(client, session.run_id)
        session.finish()
    children = _children(client, session.run_id)
    assert sorted(children, key=int) == ["0", "1", "2", "3"]
    again = children["2"]
    assert again.data.tags["cotune.backfilled"] == "true" and "cotune.backfilled" not in children["1"].data.tags
    assert again.data.params == lost.data.params and again.data.metrics["time_s"] == lost.data.metrics["time_s"]
    assert again.info.status == "FINISHED" and again.info.start_time <= lost.info.start_time
    assert tracker.backfill(session.run_id, session.study) == 0  # nothing missing: nothing written twice
    tracker.close()
