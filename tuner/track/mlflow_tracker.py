"""MLflow tracking: an experiment per job, a parent run per (problem, device) study, a child run per trial.

Child runs are written by one background thread, so the tuning loop pays a queue put per trial rather
than three round trips to the tracking store. The parent run id is returned at once, so it can be
recorded in the Optuna study before any trial runs.

The Optuna study is the record of truth; MLflow is its review copy. A child run can go missing: the
tracking server was down when its write ran, or the worker that measured it was killed. Finishing a study
writes a child run for every finished trial that has none, from what the study holds, tagged
``cotune.backfilled``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from cotune.tuner.errors import StorageError
from cotune.tuner.measure.trial_record import TRIAL_ATTR, record, result_from_trial
from cotune.tuner.track.tracker import BestLog, StudyInfo, TrialLog
from cotune.tuner.types import Config, FailureKind, Measurement, Problem, TrialStatus

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

_RUN_STATUS = {TrialStatus.OK: "FINISHED", TrialStatus.FAIL: "FAILED", TrialStatus.PRUNED: "KILLED"}


def open_client(uri: str) -> MlflowClient:
    # Against a tracking server, ending a run otherwise costs an extra GET only to print the run's URL.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # MLflow's own default retries a request to a server that is down for about 4 minutes; a finishing
    # study would wait that long for each queued trial. Trial runs missed are written at the study's end.
    for name, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except (MlflowException, OSError) as exc:
        raise StorageError(f"cannot open MLflow tracking store {uri}: {str(exc).splitlines()[0]}") from None
    return client


_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",  # 1 + 2 + 4 s of backoff, then the write fails
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# MLflow 3's UI opens an experiment without a kind in its GenAI layout (traces, no runs table); this kind
# gives the classic runs table with parents and their child runs.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def artifact_location(tracking_uri: str) -> str | None:
    """Artifacts beside a local SQLite store (``cotune-runs/mlartifacts``) instead of MLflow's default
    ``./mlruns`` in whatever folder the command ran from; a tracking server keeps its own."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def summary_metrics(problem: Problem, device_name: str, m: Measurement) -> dict[str, float]:
    """The few numbers the runs table shows for a study, under short names: time in ms, throughput (GFLOP/s,
    and TFLOP/s on a GPU) and the share of the device's roofline where its peak is known."""
    from cotune.tuner.device.gpu_specs import lookup, roofline_fraction

    out = {"time_ms": m.median_s * 1e3, "gflops": m.gflops}
    spec = lookup(device_name)
    if spec is not None:
        out["tflops"] = m.gflops / 1e3
        fraction = roofline_fraction(m.flops, m.bytes_moved, m.median_s, problem.dtype.value, spec)
        if fraction:
            out["pct_of_roofline"] = 100 * fraction
    return out


# After a failed write, trial writes wait this long before the next try; those skipped meanwhile are
# written when the study finishes.
RETRY_AFTER_S = 30.0
# In the service, the last trials' child runs may still be in another worker's writer thread when the
# study finishes: a missing run younger than this is waited for before it is written again.
SHARED_WRITER_GRACE_S = 20.0


class MlflowTracker:
    def __init__(self, tracking_uri: str, shared: bool = False) -> None:
        """``shared``: other processes log trials of the same studies (service workers)."""
        self.uri = tracking_uri
        self.shared = shared
        self.client = open_client(tracking_uri)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cotune-mlflow")
        self._pending: list[Future[None]] = []
        self._experiment_id: str | None = None
        self._parent: str | None = None
        self._errors: list[str] = []
        self._down_until = 0.0  # monotonic time before which trial writes are not tried

    def start_job(self, job: str) -> None:
        name = f"cotune/{job}"
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            self._experiment_id = self.client.create_experiment(
                name, artifact_location=artifact_location(self.uri), tags=EXPERIMENT_TAGS
            )
            return
        self._experiment_id = exp.experiment_id
        for key, value in EXPERIMENT_TAGS.items():
            if exp.tags.get(key) != value:
                self.client.set_experiment_tag(exp.experiment_id, key, value)

    @property
    def experiment_id(self) -> str | None:
        return self._experiment_id

    def start_study(self, info: StudyInfo) -> str:
        assert self._experiment_id is not None, "start_job first"
        tags = {
            "mlflow.runName": info.run_name or info.problem.key,
            "cotune.job": info.job,
            "cotune.study": info.study_name,
            "cotune.kernel": info.problem.kernel,
            "cotune.problem": info.problem.key,
            "cotune.device": info.device.name,
            **info.tags,
        }
        existing = self.client.search_runs(
            [self._experiment_id], f"tags.`cotune.study` = '{info.study_name}'", max_results=1
        )
        run = existing[0] if existing else self.client.create_run(self._experiment_id, tags=tags)
        self._parent = run.info.run_id
        return self._parent

    def log_trial(self, trial: TrialLog) -> None:
        self._pending.append(self._pool.submit(self._write_trial, self._parent, trial))

    def _write_trial(self, parent: str, trial: TrialLog, started_ms: int | None = None) -> bool:
        """Whether the run was written. ``started_ms``: the trial's own start, for a run written after the
        fact (then tagged so)."""
        from mlflow.entities import Metric, Param, RunTag

        if started_ms is None and time.monotonic() < self._down_until:
            return False  # the server failed a write moments ago: leave this one to the backfill

        now = started_ms or int(time.time() * 1000)
        tags = {
            "mlflow.parentRunId": parent,
            "mlflow.runName": f"trial-{trial.number}",
            "cotune.trial": str(trial.number),
            "cotune.state": trial.status.value,
        }
        if started_ms is not None:
            tags["cotune.backfilled"] = "true"
        if trial.reason:
            tags["cotune.reason"] = trial.reason[:5000]
        if trial.duplicate_of is not None:
            tags["cotune.duplicate_of"] = str(trial.duplicate_of)
        metrics = [Metric("duration_s", trial.duration_s, now, 0)]
        if trial.measurement is not None:
            metrics += [Metric(k, v, now, 0) for k, v in trial.measurement.metrics().items()]
        try:
            run = self.client.create_run(self._experiment_id, start_time=now, tags=tags)
            params = [Param(k, str(v)) for k, v in trial.config.params]
            self.client.log_batch(
                run.info.run_id, metrics=metrics, params=params, tags=[RunTag("cotune.kind", "trial")]
            )
            self.client.set_terminated(run.info.run_id, _RUN_STATUS[trial.status])
        except Exception as exc:  # recorded and reported at close; tuning goes on
            self._errors.append(f"trial {trial.number}: {exc}")
            self._down_until = time.monotonic() + RETRY_AFTER_S
            return False
        return True

    def flush(self) -> None:
        """Wait until every trial logged so far is written (or its failure recorded)."""
        for f in self._pending:
            f.result()
        self._pending.clear()

    def finish_study(self, best: BestLog | None, study: optuna.Study) -> bool:
        """Write what the study's trials miss and the study's summary; whether all of it was written. MLflow
        being down fails neither the study nor the job: both are in the Optuna storage, and the failure is
        logged and reported at close."""
        from mlflow.exceptions import MlflowException

        self.flush()
        try:
            self.record_study(best, study)
        except (MlflowException, OSError, StorageError) as exc:
            error = f"study {study.study_name}: {str(exc).splitlines()[0]}"
            self._errors.append(error)
            later = "the workers write them" if self.shared else "`cotune mlflow-sync JOB` writes them"
            log.warning(
                "MLflow could not record %s; its trials and best config are in the Optuna storage, and %s once "
                "the server is back",
                error,
                later,
            )
            return False
        return True

    def resume_study(self, run_id: str) -> None:
        """Continue a study's parent run made earlier, by its id (``cotune mlflow-sync``)."""
        run = self.client.get_run(run_id)
        self._experiment_id, self._parent = run.info.experiment_id, run_id

    def record_study(self, best: BestLog | None, study: optuna.Study) -> int:
        """Write the trial runs the study misses and its summary on the parent run; returns the trial runs
        written. Raises when MLflow cannot be written."""
        from mlflow.entities import Metric, Param

        parent = self._parent
        written = self.backfill(parent, study)
        now = int(time.time() * 1000)
        from optuna.trial import TrialState

        states = {TrialState.COMPLETE: "ok", TrialState.FAIL: "fail", TrialState.PRUNED: "pruned"}
        counts = dict.fromkeys(states.values(), 0)
        for t in study.get_trials(deepcopy=False, states=tuple(states)):
            counts[states[t.state]] += 1
        metrics = [Metric(f"trials_{k}", float(v), now, 0) for k, v in counts.items()]
        params: list[Param] = []
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            if best is not None:
                params = [Param(f"best.{k}", str(v)) for k, v in best.config.params]
                metrics += [Metric(f"best_{k}", v, now, 0) for k, v in best.remeasured.metrics().items()]
                metrics.append(Metric("best_tuned_time_s", best.tuned.median_s, now, 0))
                attrs = study.user_attrs
                if "problem" in attrs and "device" in attrs:
                    problem = Problem.from_json(attrs["problem"])
                    summary = summary_metrics(problem, attrs["device"]["name"], best.remeasured)
                    metrics += [Metric(k, v, now, 0) for k, v in summary.items()]
                (out / "best_config.json").write_text(
                    json.dumps(
                        {
                            "trial": best.trial_number,
                            "config": best.config.values,
                            "metrics": best.remeasured.metrics(),
                        },
                        indent=2,
                    )
                )
            baselines = study.user_attrs.get("baselines", {})
            for name, b in baselines.items():
                if "measurement" in b:
                    metrics.append(
                        Metric(f"baseline_{name}_time_s", Measurement.from_json(b["measurement"]).median_s, now, 0)
                    )
            if baselines:
                (out / "baselines.json").write_text(json.dumps(baselines, indent=2))
            if "pareto_front" in study.user_attrs:
                (out / "pareto_front.json").write_text(json.dumps(study.user_attrs["pareto_front"], indent=2))
            study.trials_dataframe().to_csv(out / "trials.csv", index=False)
            _plots(study, out)
            # Parameters are immutable in MLflow; a resumed study may already hold best.* params.
            existing = self.client.get_run(parent).data.params
            params = [p for p in params if p.key not in existing]
            self.client.log_batch(parent, metrics=metrics, params=params)
            self.client.log_artifacts(parent, str(out))
        self.client.set_terminated(parent, "FINISHED")
        return written

    def backfill(self, parent: str, study: optuna.Study) -> int:
        """Write a child run for each finished trial of the study that has none under ``parent``; returns
        how many were written. Raises StorageError when a write fails."""
        missing = self._missing(parent, study)
        # a trial failed as lost has no writer left anywhere; any other may still be in one
        awaited = [_finished_at(t) for t in missing if record(t).get("failure_kind") != FailureKind.WORKER_LOST.value]
        if self.shared and awaited:
            wait = SHARED_WRITER_GRACE_S - (time.time() - max(awaited))
            if wait > 0:
                time.sleep(wait)
                missing = self._missing(parent, study)
        for written, t in enumerate(missing):
            if not self._write_trial(parent, trial_log(t), started_ms=int(t.datetime_start.timestamp() * 1000)):
                raise StorageError(
                    f"{len(missing) - written} trial run(s) still missing in MLflow at {self.uri}: {self._errors[-1]}"
                )
        if missing:
            log.info("MLflow: wrote %d missing trial run(s) of study %s", len(missing), study.study_name)
        return len(missing)

    def _missing(self, parent: str, study: optuna.Study) -> list:
        logged = set()
        token = None
        while True:
            page = self.client.search_runs(
                [self._experiment_id],
                f"tags.`mlflow.parentRunId` = '{parent}'",
                max_results=1000,
                page_token=token,
            )
            logged.update(r.data.tags.get("cotune.trial") for r in page)
            token = page.token
            if not token:
                break
        return [
            t
            for t in study.get_trials(deepcopy=False)
            if t.state.is_finished() and TRIAL_ATTR in t.user_attrs and str(t.number) not in logged
        ]

    def close(self) -> None:
        self.flush()
        self._pool.shutdown(wait=True)
        if self._errors:
            log.warning("MLflow writes failed %d time(s); the first: %s", len(self._errors), self._errors[0])


def sync_job(storage_url: str, job: str, tracking_uri: str) -> list[tuple[str, int | None]]:
    """Write into MLflow what a job's finished studies hold and it lacks: missing trial runs and the
    study's summary. Returns (study, trial runs written) per study; None for a study not finished, which is
    left alone, as its workers may still be writing."""
    import optuna
    from cotune.tuner.store.studies import job_studies, open_storage

    storage = open_storage(storage_url, create=False)
    tracker = MlflowTracker(tracking_uri)
    done = []
    try:
        for summary in job_studies(storage_url, job):
            run_id = summary.user_attrs.get("mlflow_run_id")
            if not run_id:
                continue  # tuned without MLflow
            if not {"best", "pareto_front"} & set(summary.user_attrs):
                done.append((summary.study_name, None))
                continue
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            tracker.resume_study(run_id)
            best = study.user_attrs.get("best")
            done.append((summary.study_name, tracker.record_study(BestLog.from_json(best) if best else None, study)))
    finally:
        tracker.close()
    return done


def trial_log(t: optuna.trial.FrozenTrial) -> TrialLog:
    """What a child run shows of a finished trial, from the study's own record of it."""
    stored = record(t)
    return TrialLog(
        t.number,
        Config.make(t.params),
        TrialStatus(stored["status"]),
        t.value if t.values is not None and len(t.values) == 1 else None,
        result_from_trial(t).measurement,
        stored.get("reason"),
        stored.get("duplicate_of"),
        t.duration.total_seconds() if t.duration else 0.0,
    )


def _finished_at(t: optuna.trial.FrozenTrial) -> float:
    return (t.datetime_complete or t.datetime_start).timestamp()


def _plots(study: optuna.Study, out: Path) -> None:
    import matplotlib
    import optuna

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    if not any(t.state == TrialState.COMPLETE for t in study.trials):
        return
    if len(study.directions) > 1:
        plots = (("pareto_front.png", lambda s: ovm.plot_pareto_front(s, target_names=["time_s", "energy_j"])),)
    else:
        plots = (
            ("optimization_history.png", ovm.plot_optimization_history),
            ("parallel_coordinate.png", ovm.plot_parallel_coordinate),
        )
    for name, plot in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ax = plot(study)
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.savefig(out / name, dpi=100, bbox_inches="tight")
        plt.close(fig)
