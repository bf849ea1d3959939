"""Submitting jobs and sending their tickets to the queue of the hardware they target."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable

from celery import Celery
from cotune.tuner.device.profiles import CPU_KIND, cpu_profile, queue_name, recorded_profile
from cotune.tuner.driver import feasible_programs
from cotune.tuner.errors import CotuneError, SpecError, StorageError
from cotune.tuner.measure.kernel import Kernel
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.search.transfer import first_configs
from cotune.tuner.space.search_space import SearchSpace
from cotune.tuner.spec.job import JobSpec
from cotune.tuner.spec.settings import ServiceSettings
from cotune.tuner.store.jobs import JobStore, new_job_id
from cotune.tuner.store.studies import open_storage
from cotune.tuner.track.tracker import StudyInfo
from cotune.tuner.types import DeviceProfile, Problem
from cotune.worker.app import TASK_RUN_TICKET

_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


class BrokerError(CotuneError):
    """The Celery broker (Redis) cannot be reached."""


def service_study_name(job_id: str, problem_key: str, hardware: str) -> str:
    return f"{job_id}:{problem_key}:{hardware}"


def check_broker(app: Celery) -> None:
    """Fail within seconds, with the URL, when the broker is down; never hang a submit."""
    url = app.conf.broker_url
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=3)
    except Exception as exc:  # kombu raises OperationalError, socket errors and timeouts alike
        raise BrokerError(
            f"cannot reach the broker at {url}: {str(exc).splitlines()[0] or type(exc).__name__}"
        ) from None


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


def submit(
    spec: JobSpec,
    app: Celery,
    store: JobStore,
    settings: ServiceSettings,
    hardware: str = CPU_KIND,
) -> str:
    """Record the job, its studies and tickets, open its MLflow parent runs, and queue its trials."""
    if spec.search_space is not None:
        raise SpecError(
            "search_space: service jobs use the kernel's registered space (workers load no files from requests); "
            "drop the field or run the job with `cotune tune`"
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
    check_broker(app)
    space = kernel.space()
    problems = spec.expand()
    device = _submit_profile(hardware)
    budgets = {p.key: study_budget(spec.budget.trials, kernel, space, p, device) for p in problems}
    mlflow_uri = spec.mlflow_tracking_uri or settings.mlflow_tracking_uri
    job_id_hint = new_job_id()
    run_ids = _open_parent_runs(spec, kernel, space, problems, hardware, mlflow_uri, job_id_hint)
    rows = [
        (service_study_name(job_id_hint, p.key, hardware), p.to_json(), budgets[p.key], run_ids.get(p.key))
        for p in problems
    ]
    studies = [(r[0], p, r[2]) for r, p in zip(rows, problems, strict=True)]
    _create_studies(settings.storage, studies, spec, kernel, space, device)
    wall = spec.budget.wall_time_s * len(problems) if spec.budget.wall_time_s else None
    job_id, trial_tickets = store.create_job(
        spec.name, hardware, spec.model_dump(mode="json"), mlflow_uri, rows, wall, job_id=job_id_hint
    )
    send_tickets(app, store, hardware, trial_tickets)
    return job_id


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
) -> None:
    """Create the Optuna studies up front, so the reaper and ``status`` find them before any trial runs, with
    what each measures first queued, as in ``cotune tune``: the winners of the nearest finished studies of
    this kernel on this hardware (``sampler.transfer``), then the space's seeds."""
    import optuna
    from cotune.tuner.measure.objective import directions

    storage = open_storage(storage_url)
    for name, problem, budget in studies:
        study = optuna.create_study(
            storage=storage, study_name=name, directions=directions(spec.objective), load_if_exists=True
        )
        first = [] if device is None else first_configs(storage, spec, kernel, space, problem, device, budget)
        for config in first:
            study.enqueue_trial(config.values, skip_if_exists=True)


def _open_parent_runs(spec, kernel, space, problems, hardware: str, uri: str, job_id: str) -> dict[str, str]:
    """One MLflow parent run per study, made before any worker starts, so workers never race to make one."""
    from cotune.tuner.track.mlflow_tracker import MlflowTracker

    tracker = MlflowTracker(uri)
    tracker.start_job(spec.name)
    device = DeviceProfile(name=hardware, kind="cpu" if hardware == CPU_KIND else "cuda")
    tags = {"cotune.source_hash": kernel.source_hash, "cotune.space": space.source, "cotune.service_job": job_id}
    out = {}
    for p in problems:
        name = service_study_name(job_id, p.key, hardware)
        out[p.key] = tracker.start_study(StudyInfo(spec.name, name, p, device, tags))
    tracker.close()
    return out


def open_store(settings: ServiceSettings) -> JobStore:
    try:
        return JobStore(settings.storage)
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot open the job store {settings.storage}: {exc}") from None


def spec_from_record(spec_json: str) -> JobSpec:
    return JobSpec.model_validate(json.loads(spec_json))
