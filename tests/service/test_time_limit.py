"""A ticket cut by Celery's soft time limit on a real worker: its trial is failed naming the limit, the
ticket is retried, and the worker's next job is measured by a fresh candidate process, not the one still
busy with the cut trial."""

from __future__ import annotations

import json

import optuna
from cotune.tuner.measure.trial_record import record
from cotune.tuner.store.studies import open_storage
from optuna.trial import TrialState

from tests.service.conftest import noop_spec, submit, wait_job
from tests.service.stack import wait_for

# the worker's hard limit; its soft limit is 5 s less (ServiceSettings.task_soft_time_limit_s). Long enough for
# a fresh job's first ticket on a loaded machine, short enough to cut a trial within a test.
WORKER_LIMIT_S = 20


def trials_of(service, job: str) -> list:
    (study,) = json.loads(service.cli("status", job, "--json").stdout)["studies"]
    storage = open_storage(service.env["COTUNE_STORAGE"])
    return optuna.load_study(study_name=study["name"], storage=storage).get_trials(deepcopy=False)


def test_a_ticket_cut_by_the_soft_time_limit_leaves_the_worker_sound(service, tmp_path):
    service.start_worker("limited", env={"COTUNE_TASK_TIME_LIMIT_S": str(WORKER_LIMIT_S)})
    # The submitter keeps the default limit, so a 120 s trial with bench.timeout_s 150 is accepted: only the
    # worker's own limit stops it, as when an operator lowers the workers' limit but not the API's.
    slow = noop_spec("too-slow", trials=1, sleep_ms=120_000).replace("timeout_s: 60", "timeout_s: 150")
    job = submit(service, tmp_path, slow)
    (cut,) = wait_for(
        lambda: [t for t in service.tickets(job) if t["kind"] == "trial" and t["failures"] >= 1],
        120,
        "the slow trial's ticket to be cut by the worker's time limit",
    )
    assert "SoftTimeLimitExceeded" in cut["error"], cut
    assert f"COTUNE_TASK_TIME_LIMIT_S={WORKER_LIMIT_S}" in cut["error"], cut
    assert service.cli("cancel", job).returncode == 0

    # The cut trial is failed by the worker itself with the limit as its reason, not left RUNNING for a reaper.
    # (Its ticket may have been claimed again before the cancel; that attempt is cut too, and failed alike.)
    def settled() -> list:
        trials = trials_of(service, job)
        return [] if any(t.state is TrialState.RUNNING for t in trials) else trials

    trials = wait_for(settled, 120, "no trial of the cut job to be RUNNING")
    reasons = [record(t).get("reason", "") for t in trials]
    assert all(t.state is TrialState.FAIL for t in trials), reasons
    assert "soft task time limit" in reasons[0] and "COTUNE_TASK_TIME_LIMIT_S" in reasons[0], reasons

    # Same worker, same pool process (concurrency 1): a short job must be measured, not answered by the
    # candidate process still sleeping through the cut trial, nor time out waiting for it.
    quick = submit(
        service, tmp_path, noop_spec("after-the-cut", trials=1, sleep_ms=1).replace("timeout_s: 60", "timeout_s: 30")
    )
    result = wait_job(service, quick)
    assert result["state"] == "succeeded", result
    assert result["trials"]["finished"] == 1 and result["trials"]["failed"] == 0, result["trials"]
    (trial,) = trials_of(service, quick)
    assert trial.state is TrialState.COMPLETE and trial.value < 1.0, record(trial)
    assert {t["worker"] for t in service.tickets(quick)} == {"limited@test"}
