"""A trial's outcome as the Optuna study keeps it: one user attribute (``TRIAL_ATTR``) with the status,
the failure and the measurement, told in the state that matches it, and read back by the driver, the
reaper and the MLflow backfill."""

from __future__ import annotations

from cotune.tuner.measure.objective import TrialResult, score
from cotune.tuner.types import Config, FailureKind, Measurement, Objective, TrialStatus

TRIAL_ATTR = "cotune"  # per-trial record: status, reason, duplicate_of, measurement


def tell(study, trial, result: TrialResult, objective: Objective) -> None:
    from optuna.trial import TrialState

    # One attribute, one storage write: each write is a transaction on the shared storage.
    stored: dict[str, object] = {"status": result.status.value}
    if result.duplicate_of is not None:
        stored["duplicate_of"] = result.duplicate_of
    if result.failure:
        stored["failure_kind"] = result.failure.kind.value
        stored["reason"] = result.failure.message[:2000]
    if result.measurement:
        stored["measurement"] = result.measurement.to_json()
    trial.set_user_attr(TRIAL_ATTR, stored)
    if result.status is TrialStatus.OK:
        study.tell(trial, score(result.measurement, objective))
    elif result.status is TrialStatus.PRUNED:
        if result.failure is not None and result.failure.kind is FailureKind.INFEASIBLE:
            trial.set_constraint("feasible", 1.0)
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


def result_from_trial(t) -> TrialResult:
    stored = record(t)
    m = stored.get("measurement")
    return TrialResult(
        Config.make(t.params),
        TrialStatus(stored.get("status", "fail")),
        measurement=Measurement.from_json(m) if m else None,
    )


def record(t) -> dict:
    return t.user_attrs.get(TRIAL_ATTR, {})


def counted(t) -> bool:
    """Whether a finished trial is one distinct evaluation: not a repeat, not a trial lost with its worker.

    The record must agree with the state Optuna finished the trial in: when a reaper and a late worker
    race, whoever told first decides, and the other's record does not count.
    """
    from optuna.trial import TrialState

    stored = record(t)
    if "status" not in stored or "duplicate_of" in stored:
        return False
    if stored.get("failure_kind") == FailureKind.WORKER_LOST.value:
        return False
    expected = {"ok": TrialState.COMPLETE, "fail": TrialState.FAIL, "pruned": TrialState.PRUNED}
    return t.state == expected.get(stored["status"])


def fail_lost_trial(study, number: int, reason: str) -> bool:
    """Fail a trial whose process is gone (or stopped measuring it); told with skip_if_finished so a late
    result is harmless. False when the trial had already finished: its own result stands."""
    from optuna.trial import TrialState

    stored = {"status": TrialStatus.FAIL.value, "failure_kind": FailureKind.WORKER_LOST.value, "reason": reason}
    # Optuna has no public setter for a trial asked by another process; its storage API is the way.
    storage = study._storage
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        storage.set_trial_user_attr(trial_id, TRIAL_ATTR, stored)
    except RuntimeError:  # finished meanwhile: its own result stands
        return False
    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    return True
