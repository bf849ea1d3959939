"""Submitting jobs and sending their tickets to the queue of the hardware they target."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable

from celery import Celery
from cotune.tuner.device.profiles import CPU_KIND, cpu_profile, queue_name, recorded_profile
from cotune.tuner.driver import feasible_programs
from cotune.tuner.errors import CotuneError, SpecError, StorageError
from cotune.tuner.measure.kernel import Kernel
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.search.transfer import first_configs
from cotune.tuner.space.search_space import SearchSpace
from cotune.tuner.spec.job import JobSpec
from cotune.tuner.spec.redact import Redactor, redact_url
from cotune.tuner.spec.settings import MLFLOW_SETTING, ServiceSettings
from cotune.tuner.store.job_tables import JobState
from cotune.tuner.store.jobs import JobStore, new_job_id
from cotune.tuner.store.studies import open_storage
from cotune.tuner.track.tracker import StudyInfo
from cotune.tuner.types import DeviceProfile, Problem
from cotune.worker.app import TASK_RUN_TICKET

log = logging.getLogger("cotune.dispatch")
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


class BrokerError(CotuneError):
    """The Celery broker (Redis) cannot be reached."""


def service_study_name(job_id: str, problem_key: str, hardware: str) -> str:
    return f"{job_id}:{problem_key}:{hardware}"


def check_broker(app: Celery) -> None:
    """Fail within seconds, naming the broker (its password masked), when it is down; never hang a submit."""
    url = redact_url(app.conf.broker_url)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=3)
    except Exception as exc:  # kombu raises OperationalError, socket errors and timeouts alike
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BrokerError(f"cannot reach the broker at {url}: {Redactor.of([app.conf.broker_url])(reason)}") from None


def send_tickets(app: Celery, store: JobStore, hardware: str, ticket_ids: Iterable[int], countdown: float = 0) -> None:
    ids = list(ticket_ids)
    queue = queue_name(hardware)
    with app.producer_or_acquire() as producer:
        for ticket_id in ids:
            app.send_task(
                TASK_RUN_TICKET,
                args=[ticket_id],
                queue=queue,
                task_id=f"ticket-{ticket_id}-{uuid.uuid4().hex[:8]}",
                countdown=countdown or None,
                producer=producer,
                retry=True,
                retry_policy=_PUBLISH_RETRY,
            )
    store.mark_enqueued(ids)


def check_service_spec(spec: JobSpec, settings: ServiceSettings, hardware: str) -> None:
    """Everything the service refuses in a spec, checked before it connects to anything or makes a problem.

    A spec cannot choose a server-side resource (storage, MLflow, a space file) and stays within the
    server's limits (docs/service.md). Raises SpecError naming the field and the limit."""
    local_only = {
        "storage": "the service keeps every job's studies in its own storage (COTUNE_STORAGE on the server)",
        "mlflow_tracking_uri": "the service logs every job to its own MLflow (MLFLOW_TRACKING_URI on the server)",
        "search_space": "service jobs use the kernel's registered space (workers load no files from requests)",
    }
    for name, why in local_only.items():
        if getattr(spec, name) is not None:
            raise SpecError(
                f"{name}: {why}; a request cannot choose it. Drop the field, or run the job with `cotune tune`"
            )
    known = settings.known_hardware()
    if hardware not in known:
        raise SpecError(
            f"hardware {hardware!r}: no queue of this service serves it; known: {', '.join(known)} "
            "(an operator adds one with COTUNE_HARDWARE)"
        )
    if spec.budget.trials is None:
        raise SpecError("budget.trials: service jobs need a trial budget (wall_time_s alone cannot be split)")
    kernel = get_kernel(spec.kernel)
    target = "cpu" if hardware == CPU_KIND else "cuda"
    if target not in kernel.device_kinds:
        raise SpecError(
            f"kernel {spec.kernel} runs on {', '.join(kernel.device_kinds)}, not {hardware}: "
            + ("submit with --hardware <gpu slug>, e.g. nvidia-h100-80gb-hbm3" if target == "cpu" else "--hardware cpu")
        )
    problems = spec.problem_count()  # counted, not made: a short spec can expand to millions
    if problems > settings.max_problems:
        raise SpecError(
            f"problems: the spec expands to {problems:,} problems; this service takes at most "
            f"{settings.max_problems:,} per job (COTUNE_MAX_PROBLEMS)"
        )
    if spec.budget.trials > settings.max_trials_per_problem:
        raise SpecError(
            f"budget.trials: {spec.budget.trials:,} per problem; this service takes at most "
            f"{settings.max_trials_per_problem:,} (COTUNE_MAX_TRIALS_PER_PROBLEM)"
        )
    if problems * spec.budget.trials > settings.max_trials_per_job:
        raise SpecError(
            f"budget.trials: {problems:,} problems x {spec.budget.trials:,} trials is more than the "
            f"{settings.max_trials_per_job:,} trials a job may ask for (COTUNE_MAX_TRIALS_PER_JOB)"
        )
    # A study's last task re-measures its top_k configs, each of which may take up to bench.timeout_s; the
    # task must end before Celery's soft time limit stops it.
    worst = spec.bench.timeout_s * spec.top_k
    if worst >= settings.task_soft_time_limit_s:
        raise SpecError(
            f"bench.timeout_s: {spec.bench.timeout_s:g} s x top_k {spec.top_k} = {worst:g} s must stay below the "
            f"workers' task time limit of {settings.task_soft_time_limit_s:g} s (COTUNE_TASK_TIME_LIMIT_S)"
        )


def submit(
    spec: JobSpec,
    app: Celery,
    store: JobStore,
    settings: ServiceSettings,
    hardware: str = CPU_KIND,
) -> str:
    """Check the spec, then record the job (``submitting``), make its studies and MLflow parent runs, mark
    it queued and queue its trials. A failure on the way removes what it made and leaves no job; a submitter
    killed on the way leaves a ``submitting`` job that :func:`sweep_abandoned` fails and clears."""
    check_service_spec(spec, settings, hardware)
    check_broker(app)
    kernel = get_kernel(spec.kernel)
    space = kernel.space()
    problems = spec.expand()
    device = _submit_profile(hardware)
    budgets = {p.key: study_budget(spec.budget.trials, kernel, space, p, device) for p in problems}
    job_id = new_job_id()
    names = {p.key: service_study_name(job_id, p.key, hardware) for p in problems}
    rows = [(names[p.key], p.to_json(), budgets[p.key], None) for p in problems]
    wall = spec.budget.wall_time_s * len(problems) if spec.budget.wall_time_s else None
    job = spec.model_dump(mode="json")
    _, trial_tickets = store.create_job(
        spec.name, hardware, job, MLFLOW_SETTING, rows, wall, job_id=job_id, state=JobState.SUBMITTING
    )
    try:
        studies = [(names[p.key], p, budgets[p.key]) for p in problems]
        _create_studies(settings.storage, studies, spec, kernel, space, device, lambda: store.touch(job_id))
        run_ids = _open_parent_runs(spec, kernel, space, problems, hardware, settings, job_id, store)
        store.set_run_ids(job_id, {names[key]: run for key, run in run_ids.items()})
        queued = store.mark_queued(job_id, wall)
    except BaseException:
        _roll_back(settings, store, job_id, spec.name, list(names.values()))
        raise
    if not queued:  # cancelled, or given up as abandoned, while it was being made
        remove_job_parts(settings, job_id, spec.name, list(names.values()))
        return job_id
    try:
        send_tickets(app, store, hardware, trial_tickets)
    except Exception as exc:  # the job is queued: a reaper sends tickets whose messages never arrived
        log.warning("queueing the tickets of %s failed (a reaper will send them): %s", job_id, exc)
    return job_id


def _roll_back(settings: ServiceSettings, store: JobStore, job_id: str, name: str, studies: list[str]) -> None:
    remove_job_parts(settings, job_id, name, studies)
    try:
        store.delete_job(job_id)
    except Exception:  # the database is away: a sweep fails the job once it is back
        log.warning("could not remove the record of the failed submit %s", job_id, exc_info=True)


def remove_job_parts(settings: ServiceSettings, job_id: str, name: str, studies: list[str]) -> None:
    """Delete what a submit made for a job that never ran: its Optuna studies and MLflow parent runs. A store
    that cannot be reached is logged and skipped (the other is still cleared)."""
    try:
        _delete_studies(settings.storage, studies)
    except Exception:
        log.warning("could not delete the studies of %s", job_id, exc_info=True)
    try:
        _delete_runs(settings.mlflow_tracking_uri, job_id, name)
    except Exception:
        log.warning("could not delete the MLflow parent runs of %s (tag cotune.service_job)", job_id, exc_info=True)


def _delete_studies(storage_url: str, studies: list[str]) -> None:
    import optuna

    storage = open_storage(storage_url)
    for study in studies:
        try:
            optuna.delete_study(study_name=study, storage=storage)
        except KeyError:
            pass  # never made


def _delete_runs(uri: str, job_id: str, name: str) -> None:
    from cotune.tuner.track.mlflow_tracker import open_client

    client = open_client(uri)
    experiment = client.get_experiment_by_name(f"cotune/{name}")  # MlflowTracker.start_job names it so
    if experiment is None:
        return
    token = None
    while True:
        page = client.search_runs(
            [experiment.experiment_id], f"tags.`cotune.service_job` = '{job_id}'", max_results=1000, page_token=token
        )
        for run in page:
            client.delete_run(run.info.run_id)
        token = page.token
        if not token:
            return


def sweep_abandoned(settings: ServiceSettings, store: JobStore) -> list[str]:
    """Fail the jobs whose submitter stopped mid-submit (untouched for ``submit_stale_s``) and remove their
    studies and MLflow runs; run at API start and by every worker's reaper. Returns the job ids."""
    swept = []
    for job in store.take_abandoned(settings.submit_stale_s):
        log.warning("job %s was left half-submitted; failing it and removing its studies and runs", job["id"])
        remove_job_parts(settings, job["id"], job["name"], [s["name"] for s in store.studies(job["id"])])
        swept.append(job["id"])
    return swept


def _submit_profile(hardware: str) -> DeviceProfile | None:
    """The device a study's first configs are screened against at submit: the hardware's recorded profile,
    this host's for the CPU queue, none for a GPU without one (then the study gets no first configs). The
    worker screens each again on its own device, and one it rejects becomes a PRUNED trial, not a
    measurement: a ticket asks on until it has measured."""
    if hardware == CPU_KIND:
        return cpu_profile()
    try:
        return recorded_profile(hardware)
    except CotuneError:
        return None


def study_budget(
    trials: int, kernel: Kernel, space: SearchSpace, problem: Problem, device: DeviceProfile | None
) -> int:
    """The trial tickets a study gets: what was asked for, at most one per program the hardware's profile
    admits, as ``cotune tune`` caps its budget, so that no ticket is made only to find the space exhausted.
    Without a profile (a GPU with none recorded), at most the space's size; the worker's own screen then
    ends any ticket past the last program after one ask."""
    programs = None if device is None else feasible_programs(kernel, space, problem, device)
    return min(trials, space.size if programs is None else max(len(programs), 1))


def _create_studies(
    storage_url: str,
    studies: list[tuple[str, Problem, int]],
    spec: JobSpec,
    kernel: Kernel,
    space: SearchSpace,
    device: DeviceProfile | None,
    alive: Callable[[], None],
) -> None:
    """Create the Optuna studies up front, so the reaper and ``status`` find them before any trial runs, with
    what each measures first queued, as in ``cotune tune``: the winners of the nearest finished studies of
    this kernel on this hardware (``sampler.transfer``), then the space's seeds."""
    import optuna
    from cotune.tuner.measure.objective import directions

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study on the submitter's stderr
    storage = open_storage(storage_url)
    for i, (name, problem, budget) in enumerate(studies):
        if i % 10 == 9:
            alive()
        study = optuna.create_study(
            storage=storage, study_name=name, directions=directions(spec.objective), load_if_exists=True
        )
        first = [] if device is None else first_configs(storage, spec, kernel, space, problem, device, budget)
        for config in first:
            study.enqueue_trial(config.values, skip_if_exists=True)


def _open_parent_runs(
    spec: JobSpec,
    kernel: Kernel,
    space: SearchSpace,
    problems: list[Problem],
    hardware: str,
    settings: ServiceSettings,
    job_id: str,
    store: JobStore,
) -> dict[str, str]:
    """One MLflow parent run per study, made before any worker starts, so workers never race to make one.
    Tagged with the job id, so a failed or abandoned submit finds and removes them.

    MLflow is not on a submit's critical path: if it cannot be reached, or fails on the way, the job goes on
    with the runs made so far, and the workers' MLflow sync makes the others once it answers."""
    from cotune.tuner.track.mlflow_tracker import MlflowTracker

    out: dict[str, str] = {}
    try:
        tracker = MlflowTracker(settings.mlflow_tracking_uri)
        try:
            tracker.start_job(spec.name)
            for i, p in enumerate(problems):
                if i % 10 == 9:
                    store.touch(job_id)
                name = service_study_name(job_id, p.key, hardware)
                out[p.key] = tracker.start_study(
                    StudyInfo(spec.name, name, p, device_for(hardware), tags_for(kernel, space, job_id))
                )
        finally:
            tracker.close()
    except Exception as exc:  # StorageError (cannot open), MlflowException, socket errors: all "not now"
        log.warning(
            "MLflow could not take the parent runs of %s (%d of %d made); the workers' MLflow sync makes the "
            "rest once it answers: %s",
            job_id,
            len(out),
            len(problems),
            settings.redactor()(str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__),
        )
    return out


def device_for(hardware: str) -> DeviceProfile:
    """The device a parent run names: the hardware kind (a worker's own device is in the study's attrs)."""
    return DeviceProfile(name=hardware, kind="cpu" if hardware == CPU_KIND else "cuda")


def tags_for(kernel: Kernel, space: SearchSpace, job_id: str) -> dict[str, str]:
    """The tags of a service job's parent run; ``cotune.service_job`` lets a failed submit find its runs."""
    return {"cotune.source_hash": kernel.source_hash, "cotune.space": space.source, "cotune.service_job": job_id}


def open_store(settings: ServiceSettings) -> JobStore:
    """The job store of these settings; every error it records is stripped of their credentials."""
    redact = settings.redactor()
    try:
        return JobStore(settings.storage, scrub=redact)
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot open the job store {redact_url(settings.storage)}: {redact(str(exc))}") from None


def spec_from_record(spec_json: str) -> JobSpec:
    return JobSpec.model_validate(json.loads(spec_json))
