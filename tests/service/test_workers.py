"""The service with real Celery worker processes on a real Redis and PostgreSQL: sharing work, surviving a
worker killed with SIGKILL mid-trial and a Redis restart, and failing fast when the broker is down."""

from __future__ import annotations

import json
import os
import signal
import time

import optuna
from cotune.tuner.measure.trial_record import TRIAL_ATTR, counted
from cotune.tuner.store.job_tables import TicketKind, TicketState, tickets
from cotune.tuner.store.jobs import JobStore
from cotune.tuner.store.studies import open_storage
from optuna.trial import TrialState

from tests.service.conftest import noop_spec, submit, wait_job
from tests.service.stack import wait_for


def study_trials(service, record: dict) -> list:
    (study,) = record["studies"]
    loaded = optuna.load_study(study_name=study["name"], storage=open_storage(service.env["COTUNE_STORAGE"]))
    return loaded.get_trials(deepcopy=False)


def assert_exactly_once(service, record: dict, job: str, requested: int) -> list:
    trials = study_trials(service, record)
    assert not [t.number for t in trials if t.state is TrialState.RUNNING], "a trial was left RUNNING"
    measured = [t for t in trials if counted(t) and t.user_attrs[TRIAL_ATTR]["status"] in ("ok", "fail")]
    assert len(measured) == requested
    configs = [tuple(sorted(t.params.items())) for t in measured]
    assert len(set(configs)) == requested, "a config was measured twice"
    trial_tickets = [t for t in service.tickets(job) if t["kind"] == "trial"]
    assert all(t["state"] == "done" for t in trial_tickets)
    numbers = [t["trial_number"] for t in trial_tickets if t["outcome"] in ("ok", "fail")]
    assert sorted(numbers) == sorted(t.number for t in measured), "tickets and counted trials disagree"
    return trials


def test_two_workers_share_a_job(service, tmp_path):
    service.start_worker("a")
    service.start_worker("b")
    job = submit(service, tmp_path, noop_spec("share", trials=10, sleep_ms=150))
    record = wait_job(service, job)
    assert record["state"] == "succeeded"
    assert record["trials"] == {
        "requested": 10,
        "finished": 10,
        "failed": 0,
        "running": 0,
        "pending": 0,
        "skipped": 0,
        "skipped_by": {},
    }
    assert_exactly_once(service, record, job, 10)
    workers = {t["worker"].split("@")[0] for t in service.tickets(job) if t["kind"] == "trial"}
    assert workers == {"a", "b"}

    # All trials sit under the study's one MLflow parent run, whichever worker ran them.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(service.env["MLFLOW_TRACKING_URI"])
    parent = record["studies"][0]["mlflow_run_id"]
    exp = client.get_run(parent).info.experiment_id
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1000)
    assert len(children) >= 10
    assert client.get_run(parent).info.status == "FINISHED"
    best = json.loads(service.cli("best", job).stdout)
    assert best[0]["kernel"] == "noop" and best[0]["metrics"]["time_s"] > 0.1
    watched = service.cli("watch", job, "--interval", "0.2")
    assert watched.returncode == 0 and "succeeded" in watched.stdout and "10/10" in watched.stdout

    # a later job on a neighbouring shape measures that winner first, as `cotune tune` does (sampler.transfer)
    (study,) = record["studies"]
    storage = open_storage(service.env["COTUNE_STORAGE"])
    winner = optuna.load_study(study_name=study["name"], storage=storage).user_attrs["best"]["config"]
    nearby = submit(service, tmp_path, noop_spec("share", trials=2, sleep_ms=300))
    later = wait_job(service, nearby)
    first = min(assert_exactly_once(service, later, nearby, 2), key=lambda t: t.number)
    assert first.params == winner


def test_kill_9_of_a_worker_mid_trial_loses_and_doubles_nothing(service, tmp_path):
    victim = service.start_worker("victim")
    job = submit(service, tmp_path, noop_spec("kill9", trials=8, sleep_ms=1500))
    store = JobStore(service.env["COTUNE_STORAGE"])
    storage = open_storage(service.env["COTUNE_STORAGE"])

    def victim_measuring() -> bool:
        # A claimed ticket with a trial number can also be past its measurement (told, logging to MLflow):
        # only a trial still RUNNING in Optuna is one the kill will lose.
        held = [
            t
            for t in service.tickets(job)
            if t["state"] == "claimed" and t["trial_number"] is not None and (t["worker"] or "").startswith("victim@")
        ]
        studies = {t["study"]: optuna.load_study(study_name=t["study"], storage=storage) for t in held}
        return any(
            studies[t["study"]].get_trials(deepcopy=False)[t["trial_number"]].state is TrialState.RUNNING for t in held
        )

    def frozen_measuring() -> bool:
        # Freeze the victim, then read the store: what it shows cannot change until the kill, however slow
        # this machine is. If the victim holds no trial, let it go on and look again.
        os.killpg(victim.pid, signal.SIGSTOP)
        if victim_measuring():
            return True
        os.killpg(victim.pid, signal.SIGCONT)
        return False

    wait_for(victim_measuring, 60, "the victim to start measuring a trial")
    service.start_worker("survivor")
    wait_for(frozen_measuring, 120, "the victim to be frozen while it measures a trial", interval=0.2)
    service.kill_worker(victim)
    record = wait_job(service, job)
    assert record["state"] == "succeeded", record
    assert record["trials"]["finished"] == 8
    trials = assert_exactly_once(service, record, job, 8)
    lost = [t for t in trials if t.user_attrs.get(TRIAL_ATTR, {}).get("failure_kind") == "worker_lost"]
    states = [(t.number, t.state.name, t.user_attrs.get(TRIAL_ATTR, {}).get("failure_kind")) for t in trials]
    assert len(lost) >= 1 and all(t.state is TrialState.FAIL for t in lost), f"{states}\n{service.diagnosis(job)}"
    assert store.job(job)["state"] == "succeeded"

    # MLflow has one child run per trial of the study, the lost ones written when the study finished
    from mlflow.tracking import MlflowClient

    client = MlflowClient(service.env["MLFLOW_TRACKING_URI"])
    parent = record["studies"][0]["mlflow_run_id"]
    exp = client.get_run(parent).info.experiment_id
    runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1000)
    assert sorted(int(r.data.tags["cotune.trial"]) for r in runs) == sorted(
        t.number for t in trials if TRIAL_ATTR in t.user_attrs
    )
    backfilled = {int(r.data.tags["cotune.trial"]): r for r in runs if r.data.tags.get("cotune.backfilled")}
    assert {t.number for t in lost} <= set(backfilled)
    assert all(backfilled[t.number].data.tags["cotune.state"] == "fail" for t in lost)
    assert "lease" in backfilled[lost[0].number].data.tags["cotune.reason"]


def test_a_reaper_finishes_a_job_whose_finalize_ticket_was_never_released(service, tmp_path):
    """A job left so by a version whose store could lose that release (two last trials finishing at once):
    every trial ticket done, the finalize ticket pending and unreleased. A live worker's reaper mends it,
    even with a broken job beside it (its Optuna study gone) that the reaper cannot read."""
    store = JobStore(service.env["COTUNE_STORAGE"])
    broken, _ = store.create_job("broken", "cpu", {}, None, [("no-such-study", {"n": 1}, 1, None)], None)
    job = submit(service, tmp_path, noop_spec("unreleased", trials=1, sleep_ms=1))
    with store.engine.begin() as c:
        c.execute(
            tickets.update()
            .where(tickets.c.job_id == job, tickets.c.kind == TicketKind.TRIAL.value)
            .values(state=TicketState.DONE.value, outcome="ok")
        )
    service.start_worker("mender")
    record = wait_job(service, job)
    assert record["state"] == "succeeded"
    (finalize,) = [t for t in service.tickets(job) if t["kind"] == TicketKind.FINALIZE.value]
    assert finalize["state"] == TicketState.DONE.value and finalize["worker"].startswith("mender@")
    store.cancel(broken)


def test_a_stalled_study_ends_its_remaining_tickets(service, tmp_path):
    """budget.patience in a service job: once the study's best stops moving, the tickets left end "stalled"
    without measuring, and the job finishes with what it has."""
    service.start_worker("patient")
    spec = noop_spec("stall", trials=60, sleep_ms=5).replace("{trials: 60}", "{trials: 60, patience: 4}")
    job = submit(service, tmp_path, spec)
    record = wait_job(service, job)
    assert record["state"] == "succeeded"
    counts = record["trials"]
    assert 4 < counts["finished"] < 60 and counts["finished"] + counts["skipped"] == 60, counts
    assert counts["skipped_by"] == {"stalled": counts["skipped"]}
    shown = service.cli("status", job).stdout
    assert f"{counts['skipped']} skipped (stalled {counts['skipped']})" in shown, shown
    assert_exactly_once(service, record, job, counts["finished"])


def test_redis_restart_mid_job(service, tmp_path):
    service.start_worker("steady")
    job = submit(service, tmp_path, noop_spec("redis-restart", trials=8, sleep_ms=300))
    wait_for(lambda: sum(t["state"] == "done" for t in service.tickets(job)) >= 2, 60, "two trials to finish")
    service.redis.kill()  # every queued message is gone: this Redis keeps nothing on disk
    time.sleep(2)
    service.redis.start()
    record = wait_job(service, job)
    assert record["state"] == "succeeded"
    assert_exactly_once(service, record, job, 8)


def test_submit_fails_fast_when_the_broker_is_down(service, tmp_path):
    from tests.service.stack import free_port

    env = {**service.env, "COTUNE_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    (tmp_path / "spec.yaml").write_text(noop_spec("nobroker", trials=2, sleep_ms=1))
    import subprocess
    import sys

    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cotune.tuner.cli", "submit", str(tmp_path / "spec.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 1
    assert "cannot reach the broker at redis://127.0.0.1" in done.stderr
    assert "Traceback" not in done.stderr
    assert elapsed < 60  # a hang, not speed: without the check, Celery retries an absent broker for ever
    store = JobStore(service.env["COTUNE_STORAGE"])
    assert not [j for j in store.jobs() if j["name"] == "nobroker"], "a job was recorded without a broker"


def test_a_job_never_runs_on_other_hardware(service, tmp_path):
    service.start_worker("cpu-only")
    gpu_job = "name: gpu-bound\nkernel: triton_matmul\nproblems: [{M: 64, N: 64, K: 64}]\nbudget: {trials: 4}\n"
    (tmp_path / "gpu.yaml").write_text(gpu_job)
    done = service.cli("submit", str(tmp_path / "gpu.yaml"), "--hardware", "nvidia-h100-80gb-hbm3")
    job = done.stdout.strip()
    # a CPU job submitted after it runs to the end: the CPU worker served its queue, and its reaper ran
    # rounds, all the while the GPU job was there to take
    assert wait_job(service, submit(service, tmp_path, noop_spec("cpu-after", trials=2, sleep_ms=1)))["state"] == (
        "succeeded"
    )
    record = json.loads(service.cli("status", job, "--json").stdout)
    assert record["hardware"] == "nvidia-h100-80gb-hbm3"
    assert record["state"] == "queued" and record["trials"]["pending"] == 4
    # the study holds the space's known-good seed that the recorded H100 profile admits for this shape, queued
    # first: the tutorial's 64x32 tile (a quarter of 4 trials is one seed; the persistent seeds, first in the
    # list, have tiles larger than this 64x64 shape)
    [study] = JobStore(service.env["COTUNE_STORAGE"]).studies(job)
    loaded = optuna.load_study(study_name=study["name"], storage=open_storage(service.env["COTUNE_STORAGE"]))
    [seed] = loaded.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert seed.system_attrs["fixed_params"] == {
        "KERNEL": "tutorial", "BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 8, "SPLIT_K": 1, "num_warps": 2,
        "num_stages": 5,
    }  # fmt: skip
    assert service.cli("cancel", job).returncode == 0
    # and the reverse is refused at submit: a CPU kernel is not sent to a GPU queue, nor a GPU kernel to the CPU
    (tmp_path / "cpu.yaml").write_text(noop_spec("cpu-bound", trials=2, sleep_ms=1))
    refused = service.cli("submit", str(tmp_path / "cpu.yaml"), "--hardware", "nvidia-h100-80gb-hbm3")
    assert refused.returncode == 1 and "kernel noop runs on cpu, not nvidia-h100-80gb-hbm3" in refused.stderr
    refused = service.cli("submit", str(tmp_path / "gpu.yaml"))
    assert refused.returncode == 1 and "kernel triton_matmul runs on cuda, not cpu" in refused.stderr
