"""The MLflow sync: a thread in each worker's main process that writes what MLflow is owed.

MLflow is the review copy of a job, never on its critical path: a submit or a worker that cannot reach it
goes on without it, and the study is left owed in the job store (``cotune_studies.mlflow_synced``). Every
``reap_interval_s``, each worker's sync takes the owed studies that will not change any more (finalized, or
of an ended job) and, when the tracking server answers, writes for each one:

- its parent run, if the submit could not make it;
- a child run for every finished trial that has none (tagged ``cotune.backfilled``);
- for a finalized study, its summary (best config, metrics, artifacts), the parent run FINISHED; for a
  study of a cancelled or failed job, the parent run closed KILLED or FAILED.

A per-study advisory lock in PostgreSQL makes one worker's sync write each study, whoever else runs one.
"""

from __future__ import annotations

import json
import logging
import threading

from cotune.tuner.errors import StorageError
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.spec.settings import ServiceSettings
from cotune.tuner.store.job_tables import JobState
from cotune.tuner.store.jobs import JobStore
from cotune.tuner.store.studies import open_storage
from cotune.tuner.track.tracker import BestLog, StudyInfo
from cotune.tuner.types import Problem
from cotune.worker.dispatch import device_for, spec_from_record, tags_for

log = logging.getLogger("cotune.mlflow_sync")

# How a parent run ends when its study never finished: the job was cancelled or failed first.
_CLOSED = {JobState.CANCELLED.value: "KILLED", JobState.FAILED.value: "FAILED", JobState.SUCCEEDED.value: "FINISHED"}


class MlflowSync:
    def __init__(self, settings: ServiceSettings, store: JobStore | None = None) -> None:
        self.settings = settings
        self.store = store or JobStore(settings.storage, scrub=settings.redactor())
        self.storage = open_storage(settings.storage)
        self._down_logged = False

    def sync_once(self) -> int:
        """Write what MLflow is owed; returns how many studies were brought up to date. MLflow still down
        leaves everything owed for the next round."""
        owed = self.store.mlflow_owed()
        if not owed:
            return 0
        from cotune.tuner.track.mlflow_tracker import MlflowTracker

        try:
            tracker = MlflowTracker(self.settings.mlflow_tracking_uri, shared=True)
        except StorageError as exc:
            if not self._down_logged:  # once per outage, not once per round
                log.warning("MLflow is owed %d+ studies and cannot be reached yet: %s", len(owed), exc)
                self._down_logged = True
            return 0
        self._down_logged = False
        synced = 0
        try:
            for row in owed:
                with self.store.mlflow_sync_lock(row["job_id"], row["study"]) as done:
                    if done is None:
                        continue  # another worker's sync has it, or had it
                    try:
                        done(self._sync_study(tracker, row))
                    except KeyError:  # its Optuna study was deleted by hand: nothing is left to write
                        log.warning("MLflow sync: %s has no Optuna study any more; nothing to write", row["study"])
                        done(None)
                        continue
                    except Exception as exc:
                        reason = self.settings.redactor()(str(exc).splitlines()[0] if str(exc).strip() else repr(exc))
                        if not _answers(tracker):  # the server went away: the rest waits for the next round
                            log.warning("MLflow sync stopped at %s, MLflow is gone again: %s", row["study"], reason)
                            return synced
                        # one study's trouble must not hold up the others: it is tried again next round
                        log.warning("MLflow sync of %s failed (tried again next round): %s", row["study"], reason)
                        continue
                    synced += 1
        finally:
            tracker.close()
        if synced:
            log.info("MLflow sync: %d owed stud%s written", synced, "y" if synced == 1 else "ies")
        return synced

    def _sync_study(self, tracker, row: dict) -> str:  # noqa: ANN001 - an MlflowTracker
        """Write one owed study; returns its parent run id."""
        import optuna

        study = optuna.load_study(study_name=row["study"], storage=self.storage)
        tracker.start_job(row["job_name"])
        run_id = row["mlflow_run_id"] or study.user_attrs.get("mlflow_run_id")
        if run_id and not _run_exists(tracker, run_id):  # deleted in MLflow, or a tracking store started afresh
            log.warning("MLflow sync: the parent run %s of %s is gone; making a new one", run_id, row["study"])
            run_id = None
        if run_id:
            tracker.resume_study(run_id)
        else:  # the submit could not reach MLflow: make the parent run now, as the submit would have
            spec = spec_from_record(row["spec"])
            kernel = get_kernel(spec.kernel)
            problem = Problem.from_json(json.loads(row["problem"]))
            tags = tags_for(kernel, kernel.space(), row["job_id"])
            run_id = tracker.start_study(StudyInfo(spec.name, row["study"], problem, device_for(row["hardware"]), tags))
            study.set_user_attr("mlflow_run_id", run_id)
        if row["finalized"]:
            best = study.user_attrs.get("best")
            tracker.record_study(BestLog.from_json(best) if best else None, study)
        else:
            tracker.backfill(run_id, study)
            tracker.client.set_terminated(run_id, _CLOSED.get(row["job_state"], "FAILED"))
        return run_id

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.reap_interval_s):
            try:
                self.sync_once()
            except Exception:  # the job store is down: try again next round
                log.warning("MLflow sync round failed", exc_info=True)


def _answers(tracker) -> bool:  # noqa: ANN001 - an MlflowTracker
    try:
        tracker.client.search_experiments(max_results=1)
    except Exception:
        return False
    return True


def _run_exists(tracker, run_id: str) -> bool:  # noqa: ANN001 - an MlflowTracker
    from mlflow.exceptions import MlflowException

    try:
        return tracker.client.get_run(run_id).info.lifecycle_stage != "deleted"
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def start_mlflow_sync(settings: ServiceSettings, hostname: str) -> threading.Event:
    stop = threading.Event()
    sync = MlflowSync(settings)
    threading.Thread(target=sync.run_forever, args=(stop,), name=f"cotune-mlflow-sync-{hostname}", daemon=True).start()
    return stop
