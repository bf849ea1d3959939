"""The local study driver: one Optuna study per (job, problem, device), ask/tell around the objective,
then a re-measure of the top-k configs with more repeats to pick the winner.

Studies are resumable: running the same job again continues each study up to its budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tuner.isolation import CandidateRunner
from tuner.kernel import Kernel
from tuner.objective import TrialObjective, TrialResult, score
from tuner.registry import get_kernel
from tuner.samplers import make_sampler
from tuner.space import SearchSpace, load_space
from tuner.spec import JobSpec
from tuner.storage import open_storage
from tuner.tracker import BestLog, StudyInfo, Tracker, TrialLog
from tuner.types import Config, DeviceProfile, Measurement, Objective, Problem, TrialStatus

# Stop asking when this many proposals in a row were infeasible or already measured.
MAX_IDLE_PROPOSALS = 200
SPACE_ENUMERATION_LIMIT = 1_000_000
TRIAL_ATTR = "cotune"  # per-trial record: status, reason, duplicate_of, measurement


@dataclass(frozen=True)
class Progress:
    problem: Problem
    measured: int
    budget: int | None
    best_value: float | None
    last: TrialResult


@dataclass(frozen=True)
class StudyOutcome:
    problem: Problem
    study_name: str
    measured: int
    failed: int
    pruned: int
    best: BestLog | None
    mlflow_run_id: str | None


def study_name(job: str, problem: Problem, device: DeviceProfile) -> str:
    return f"{job}:{problem.key}:{device.slug}"


def tune_job(
    spec: JobSpec,
    storage_url: str,
    device: DeviceProfile,
    tracker: Tracker,
    on_progress: Callable[[Progress], None] | None = None,
) -> list[StudyOutcome]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url)
    kernel = get_kernel(spec.kernel)
    space = (
        load_space(spec.search_space, predicates=kernel.predicates, shape_dims=kernel.shape_dims)
        if spec.search_space
        else kernel.space()
    )
    tracker.start_job(spec.name)
    outcomes = []
    with CandidateRunner() as runner:
        for problem in spec.expand():
            outcomes.append(_tune_problem(spec, kernel, space, problem, device, storage, runner, tracker, on_progress))
    tracker.close()
    return outcomes


def _tune_problem(
    spec, kernel: Kernel, space: SearchSpace, problem, device, storage, runner, tracker, on_progress
) -> StudyOutcome:
    import optuna
    from optuna.trial import TrialState

    name = study_name(spec.name, problem, device)
    direction = "minimize" if spec.objective is Objective.MIN_TIME else "maximize"
    sampler = make_sampler(spec.sampler.name, spec.sampler.seed)
    study = optuna.create_study(
        storage=storage, study_name=name, direction=direction, sampler=sampler, load_if_exists=True
    )
    tags = {
        "cotune.source_hash": kernel.source_hash,
        "cotune.space": space.source,
        **{f"cotune.toolchain.{k}": v for k, v in kernel.toolchain().items()},
    }
    run_id = tracker.start_study(StudyInfo(spec.name, name, problem, device, tags))
    for key, value in {
        "job": spec.name,
        "problem": problem.to_json(),
        "device": device.to_json(),
        "mlflow_run_id": run_id,
        "source_hash": kernel.source_hash,
        "toolchain": kernel.toolchain(),
        "objective": spec.objective.value,
    }.items():
        study.set_user_attr(key, value)

    objective = TrialObjective(space, problem, device, runner, spec.bench.settings())
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        objective.remember(t.number, _result_from_trial(t))
    # Fail trials left RUNNING by a crashed earlier run, so nothing stays RUNNING.
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)

    feasible = len(space.feasible_points(problem, device)) if space.size <= SPACE_ENUMERATION_LIMIT else None
    budget = spec.budget.trials
    if feasible is not None:
        budget = min(budget, feasible) if budget else feasible
    distributions = space.distributions()
    deadline = time.monotonic() + spec.budget.wall_time_s if spec.budget.wall_time_s else None
    idle = 0
    while (budget is None or objective.measured < budget) and idle < MAX_IDLE_PROPOSALS:
        if deadline is not None and time.monotonic() >= deadline:
            break
        trial = study.ask(distributions)
        config = Config.make(trial.params)
        result = objective.evaluate(config)
        _tell(study, trial, result, spec.objective)
        objective.remember(trial.number, result)
        idle = idle + 1 if result.duplicate_of is not None or result.status is TrialStatus.PRUNED else 0
        tracker.log_trial(
            TrialLog(
                trial.number,
                config,
                result.status,
                score(result.measurement, spec.objective) if result.measurement else None,
                result.measurement,
                result.reason,
                result.duplicate_of,
                result.duration_s,
            )
        )
        if on_progress:
            best = _best_value(study)
            on_progress(Progress(problem, objective.measured, budget, best, result))

    best = _remeasure_top_k(study, objective, spec)
    if best is not None:
        study.set_user_attr(
            "best",
            {
                "trial": best.trial_number,
                "config": best.config.values,
                "tuned": best.tuned.to_json(),
                "remeasured": best.remeasured.to_json(),
            },
        )
    tracker.finish_study(best, study)
    counts = {s: 0 for s in TrialStatus}
    for t in study.get_trials(deepcopy=False):
        record = _record(t)
        if "duplicate_of" not in record and "status" in record:
            counts[TrialStatus(record["status"])] += 1
    return StudyOutcome(
        problem, name, counts[TrialStatus.OK], counts[TrialStatus.FAIL], counts[TrialStatus.PRUNED], best, run_id
    )


def _tell(study, trial, result: TrialResult, objective: Objective) -> None:
    from optuna.trial import TrialState

    # One attribute, one storage write: each write is a transaction on the shared storage.
    record: dict[str, object] = {"status": result.status.value}
    if result.duplicate_of is not None:
        record["duplicate_of"] = result.duplicate_of
    if result.failure:
        record["failure_kind"] = result.failure.kind.value
        record["reason"] = result.failure.message[:2000]
    if result.measurement:
        record["measurement"] = result.measurement.to_json()
    trial.set_user_attr(TRIAL_ATTR, record)
    if result.status is TrialStatus.OK:
        study.tell(trial, score(result.measurement, objective))
    elif result.status is TrialStatus.PRUNED:
        trial.set_constraint("feasible", 1.0)
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


def _result_from_trial(t) -> TrialResult:
    record = _record(t)
    m = record.get("measurement")
    return TrialResult(
        Config.make(t.params),
        TrialStatus(record.get("status", "fail")),
        measurement=Measurement.from_json(m) if m else None,
    )


def _record(t) -> dict:
    return t.user_attrs.get(TRIAL_ATTR, {})


def _best_value(study) -> float | None:
    try:
        return study.best_value
    except ValueError:
        return None


def _remeasure_top_k(study, objective: TrialObjective, spec: JobSpec) -> BestLog | None:
    """Measure the k best distinct configs again with more repeats; the winner is picked from those."""
    from optuna.trial import TrialState

    complete = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "duplicate_of" not in _record(t)
    ]
    complete.sort(key=lambda t: t.value, reverse=spec.objective is Objective.MAX_THROUGHPUT)
    seen: set[str] = set()
    candidates = []
    for t in complete:
        key = Config.make(t.params).key
        if key not in seen:
            seen.add(key)
            candidates.append(t)
        if len(candidates) == spec.top_k:
            break
    best: BestLog | None = None
    for t in candidates:
        config = Config.make(t.params)
        result = objective.measure(config, spec.bench.settings(remeasure=True))
        if result.measurement is None:
            continue
        tuned = Measurement.from_json(_record(t)["measurement"])
        candidate = BestLog(t.number, config, tuned, result.measurement)
        if best is None or _better(candidate.remeasured, best.remeasured, spec.objective):
            best = candidate
    return best


def _better(a: Measurement, b: Measurement, objective: Objective) -> bool:
    return (
        score(a, objective) < score(b, objective)
        if objective is Objective.MIN_TIME
        else (score(a, objective) > score(b, objective))
    )
