"""Service job records and their work tickets, kept in the shared PostgreSQL database beside Optuna's tables.

A job is split into tickets: one per trial to measure, plus one per study that re-measures the top-k and
records the winner once every trial ticket of that study is finished. A Celery message only names a
ticket; whether it is run is decided here, atomically, so a message delivered twice, late, or after the
job was cancelled does nothing.

A worker holds a ticket through a lease that its heartbeat renews. When a lease runs out (the worker was
killed, its machine lost power, its network went away) a reaper on any live worker takes the ticket
back, fails the trial it was measuring, and puts the ticket up again. Redis holds no state that matters:
if it restarts empty, the reaper sees pending tickets with no queued message and sends them again.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from cotune.tuner.errors import NotFoundError, StorageError
from cotune.tuner.store.job_tables import (
    ACTIVE,
    ENDABLE,
    MAX_ATTEMPTS,
    OPEN,
    Claim,
    Expired,
    JobState,
    TicketKind,
    TicketState,
    create_tables,
    jobs,
    studies,
    tickets,
)
from cotune.tuner.store.pg import engine_for, first_line, from_now, interval, safe_url


class JobStore:
    """``scrub`` masks credentials in every error text before it is stored (the service passes its
    settings' redactor): a job record never holds one, whatever an exception quoted."""

    def __init__(self, url: str, scrub: Callable[[str], str] | None = None) -> None:
        if not url.startswith("postgresql"):
            raise StorageError(
                f"the service needs PostgreSQL for its shared storage (got {url.split(':', 1)[0]}); "
                "set COTUNE_STORAGE=postgresql+psycopg2://USER@HOST:5432/DB"
            )
        self.url = url
        self.scrub = scrub or (lambda text: text)
        self.engine = engine_for(url)
        try:
            create_tables(self.engine)
        except sa.exc.OperationalError as exc:
            raise StorageError(f"cannot reach the job store {safe_url(url)}: {first_line(exc)}") from None

    # -- jobs ---------------------------------------------------------------------------------------------

    def create_job(
        self,
        name: str,
        hardware: str,
        spec: dict[str, Any],
        mlflow_setting: str | None,
        study_budgets: Iterable[tuple[str, dict[str, Any], int, str | None]],
        wall_time_s: float | None,
        job_id: str | None = None,
        state: JobState = JobState.QUEUED,
    ) -> tuple[str, list[int]]:
        """Record a job with its studies and tickets in one transaction; returns the id and trial tickets.

        ``mlflow_setting`` names the server setting its runs go to, not a URL. A job made ``SUBMITTING``
        runs nothing until :meth:`mark_queued`; its deadline starts then."""
        job_id = job_id or new_job_id()
        with self.engine.begin() as c:
            c.execute(
                jobs.insert().values(
                    id=job_id,
                    name=name,
                    state=state.value,
                    hardware=hardware,
                    spec=json.dumps(spec),
                    mlflow_setting=mlflow_setting,
                    deadline=from_now(wall_time_s) if wall_time_s and state is not JobState.SUBMITTING else None,
                )
            )
            rows = []
            for study, problem, budget, run_id in study_budgets:
                c.execute(
                    studies.insert().values(
                        job_id=job_id,
                        name=study,
                        problem=json.dumps(problem),
                        budget=budget,
                        mlflow_run_id=run_id,
                        mlflow_synced=mlflow_setting is None,  # with no MLflow, nothing is ever owed to it
                    )
                )
                rows += [dict(kind=TicketKind.TRIAL.value, released=True, study=study) for _ in range(budget)]
                rows.append(dict(kind=TicketKind.FINALIZE.value, released=False, study=study))
            ids = [
                r[0]
                for r in c.execute(
                    tickets.insert().returning(tickets.c.id, sort_by_parameter_order=True),
                    [dict(job_id=job_id, state=TicketState.PENDING.value, **r) for r in rows],
                )
            ]
        trial_ids = [i for i, r in zip(ids, rows, strict=True) if r["kind"] == TicketKind.TRIAL.value]
        return job_id, trial_ids

    def set_run_ids(self, job_id: str, run_ids: dict[str, str]) -> None:
        """Record each study's MLflow parent run (study name -> run id)."""
        with self.engine.begin() as c:
            for study, run_id in run_ids.items():
                c.execute(
                    studies.update()
                    .where(studies.c.job_id == job_id, studies.c.name == study)
                    .values(mlflow_run_id=run_id)
                )
            c.execute(jobs.update().where(jobs.c.id == job_id).values(updated_at=sa.func.now()))

    def touch(self, job_id: str) -> None:
        """A submit still at work on the job: it is not abandoned (see :meth:`take_abandoned`)."""
        with self.engine.begin() as c:
            c.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.state == JobState.SUBMITTING.value)
                .values(updated_at=sa.func.now())
            )

    def mark_queued(self, job_id: str, wall_time_s: float | None) -> bool:
        """End a submit: the job's tickets may run from now on. False if the job was cancelled or given up
        as abandoned meanwhile (its submitter then removes what it made)."""
        with self.engine.begin() as c:
            return bool(
                c.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, jobs.c.state == JobState.SUBMITTING.value)
                    .values(
                        state=JobState.QUEUED.value,
                        updated_at=sa.func.now(),
                        deadline=from_now(wall_time_s) if wall_time_s else None,
                    )
                ).rowcount
            )

    def delete_job(self, job_id: str) -> None:
        """Remove a job that never reached its submitter's client, with its studies and tickets."""
        with self.engine.begin() as c:
            c.execute(jobs.delete().where(jobs.c.id == job_id))

    def take_abandoned(self, older_than_s: float) -> list[dict[str, Any]]:
        """Fail the jobs left ``submitting`` by a submitter that stopped (killed mid-submit) and return them,
        so the caller removes their studies and MLflow runs. Atomic: of two sweepers, one gets each job."""
        error = "the submit was interrupted (the API or CLI stopped) before its tickets were queued; nothing ran"
        with self.engine.begin() as c:
            rows = c.execute(
                jobs.update()
                .where(
                    jobs.c.state == JobState.SUBMITTING.value,
                    jobs.c.updated_at < sa.func.now() - interval(older_than_s),
                )
                .values(state=JobState.FAILED.value, error=error, updated_at=sa.func.now())
                .returning(jobs.c.id, jobs.c.name)
            ).all()
            ids = [r.id for r in rows]
            if ids:
                c.execute(
                    tickets.update()
                    .where(tickets.c.job_id.in_(ids), tickets.c.state == TicketState.PENDING.value)
                    .values(state=TicketState.CANCELLED.value)
                )
                # the caller removes their MLflow runs: MLflow is owed nothing of a job that never ran
                c.execute(studies.update().where(studies.c.job_id.in_(ids)).values(mlflow_synced=True))
        return [{"id": r.id, "name": r.name} for r in rows]

    def job(self, job_id: str) -> dict[str, Any]:
        with self.engine.connect() as c:
            row = c.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"no job {job_id}")
        return dict(row)

    def jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(jobs).order_by(jobs.c.created_at.desc()).limit(limit)).mappings().all()
        return [dict(r) for r in rows]

    def studies(self, job_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(studies).where(studies.c.job_id == job_id).order_by(studies.c.name))
            return [dict(r) for r in rows.mappings()]

    def active_jobs(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(jobs).where(jobs.c.state.in_([s.value for s in ACTIVE]))).mappings()
            return [dict(r) for r in rows]

    def ticket_counts(self, job_id: str) -> dict[tuple[str, str, str | None], int]:
        """(kind, state, outcome) -> count, for progress and the job record."""
        q = (
            sa.select(tickets.c.kind, tickets.c.state, tickets.c.outcome, sa.func.count())
            .where(tickets.c.job_id == job_id)
            .group_by(tickets.c.kind, tickets.c.state, tickets.c.outcome)
        )
        with self.engine.connect() as c:
            return {(k, s, o): n for k, s, o, n in c.execute(q)}

    def cancel(self, job_id: str) -> bool:
        """Mark an active job cancelled and its pending tickets with it; False if it had already ended."""
        self.job(job_id)
        return self._end(job_id, JobState.CANCELLED)

    def fail_job(self, job_id: str, error: str) -> None:
        self._end(job_id, JobState.FAILED, self.scrub(error)[:5000])

    def _end(self, job_id: str, state: JobState, error: str | None = None) -> bool:
        """End a job still submitting or active in ``state``; its pending tickets will not run. False if it
        had already ended."""
        values: dict[str, Any] = {"state": state.value, "updated_at": sa.func.now()}
        if error is not None:
            values["error"] = error
        with self.engine.begin() as c:
            changed = c.execute(
                jobs.update().where(jobs.c.id == job_id, jobs.c.state.in_([s.value for s in ENDABLE])).values(**values)
            ).rowcount
            c.execute(
                tickets.update()
                .where(tickets.c.job_id == job_id, tickets.c.state == TicketState.PENDING.value)
                .values(state=TicketState.CANCELLED.value)
            )
        return bool(changed)

    # -- tickets ------------------------------------------------------------------------------------------

    def claim(self, ticket_id: int, worker: str, lease_s: float) -> Claim | None:
        """Take a pending ticket of an active job; None if it is taken, finished or its job has ended."""
        active_job = sa.select(jobs.c.id).where(jobs.c.state.in_([s.value for s in ACTIVE]))
        with self.engine.begin() as c:
            row = c.execute(
                tickets.update()
                .where(
                    tickets.c.id == ticket_id,
                    tickets.c.state == TicketState.PENDING.value,
                    tickets.c.job_id.in_(active_job),
                )
                .values(
                    state=TicketState.CLAIMED.value,
                    attempt=tickets.c.attempt + 1,
                    worker=worker,
                    lease_until=from_now(lease_s),
                    trial_number=None,
                )
                .returning(tickets.c.job_id, tickets.c.study, tickets.c.kind, tickets.c.attempt)
            ).first()
            if row is None:
                return None
            ordinal = None
            if row.kind == TicketKind.TRIAL.value:
                ordinal = c.execute(
                    sa.select(sa.func.count()).where(
                        tickets.c.job_id == row.job_id,
                        tickets.c.study == row.study,
                        tickets.c.kind == TicketKind.TRIAL.value,
                        tickets.c.id < ticket_id,
                    )
                ).scalar_one()
            # One statement marks the job running (the first time) and reads its deadline.
            late = c.execute(
                sa.text(
                    "UPDATE cotune_jobs SET state = CASE WHEN state = :queued THEN :running ELSE state END, "
                    "updated_at = CASE WHEN state = :queued THEN now() ELSE updated_at END "
                    "WHERE id = :id RETURNING coalesce(deadline < now(), false)"
                ),
                {"queued": JobState.QUEUED.value, "running": JobState.RUNNING.value, "id": row.job_id},
            ).scalar()
        return Claim(ticket_id, row.job_id, row.study, TicketKind(row.kind), row.attempt, bool(late), ordinal)

    def _held(self, claim: Claim):
        return (
            tickets.c.id == claim.ticket_id,
            tickets.c.state == TicketState.CLAIMED.value,
            tickets.c.attempt == claim.attempt,
        )

    def renew(self, claim: Claim, lease_s: float) -> bool:
        with self.engine.begin() as c:
            return bool(
                c.execute(tickets.update().where(*self._held(claim)).values(lease_until=from_now(lease_s))).rowcount
            )

    def set_trial(self, claim: Claim, trial_number: int) -> None:
        """Record which trial the holder is measuring, so a reaper can fail it if the holder dies."""
        with self.engine.begin() as c:
            c.execute(tickets.update().where(*self._held(claim)).values(trial_number=trial_number))

    def finish(self, claim: Claim, outcome: str, trial_number: int | None = None) -> int | None:
        """Mark a held ticket done. For a trial ticket that was its study's last, release the finalize ticket
        in the same transaction and return its id. A lost lease changes nothing (a reaper settles it)."""
        values: dict[str, Any] = {
            "state": TicketState.DONE.value,
            "outcome": outcome,
            "lease_until": None,
            "finished_at": sa.func.now(),
        }
        if trial_number is not None:
            values["trial_number"] = trial_number
        with self.engine.begin() as c:
            if claim.kind is TicketKind.TRIAL:
                self._lock_finalize(c, claim.job_id, claim.study)
            held = c.execute(tickets.update().where(*self._held(claim)).values(**values)).rowcount
            if held and claim.kind is TicketKind.TRIAL:
                return self._release_finalize(c, claim.job_id, claim.study)
        return None

    def release_after_error(self, claim: Claim, error: str) -> bool:
        """Put a ticket whose task raised back up; after MAX_ATTEMPTS failures, fail the job. True if retried."""
        error = self.scrub(error)
        with self.engine.begin() as c:
            row = c.execute(
                tickets.update()
                .where(*self._held(claim))
                .values(
                    state=sa.case(
                        (tickets.c.failures + 1 >= MAX_ATTEMPTS, TicketState.ERROR.value),
                        else_=TicketState.PENDING.value,
                    ),
                    failures=tickets.c.failures + 1,
                    error=error[:5000],
                    lease_until=None,
                    enqueued_at=sa.func.now(),
                )
                .returning(tickets.c.state)
            ).first()
        if row is None:
            return False
        if row.state == TicketState.ERROR.value:
            self.fail_job(claim.job_id, f"ticket {claim.ticket_id} ({claim.kind}) failed {MAX_ATTEMPTS} times: {error}")
            return False
        return True

    def release_finalize(self, job_id: str, study: str) -> int | None:
        """Once no trial ticket of the study is open, release its finalize ticket (exactly once)."""
        with self.engine.begin() as c:
            self._lock_finalize(c, job_id, study)
            return self._release_finalize(c, job_id, study)

    def _lock_finalize(self, c, job_id: str, study: str) -> None:
        """Take the study's finalize ticket's row lock until the transaction ends.

        Whoever closes one of the study's trial tickets takes it before looking for open ones. Without it,
        two workers finishing the last two trials at once (READ COMMITTED) each see the other's ticket still
        open, neither releases the finalize ticket, and the job stays running for ever. With it, the second
        waits for the first to commit and then sees its ticket closed.
        """
        c.execute(
            sa.select(tickets.c.id)
            .where(tickets.c.job_id == job_id, tickets.c.study == study, tickets.c.kind == TicketKind.FINALIZE.value)
            .with_for_update()
        ).all()

    def _release_finalize(self, c, job_id: str, study: str) -> int | None:
        open_trials = (
            sa.select(tickets.c.id)
            .where(
                tickets.c.job_id == job_id,
                tickets.c.study == study,
                tickets.c.kind == TicketKind.TRIAL.value,
                tickets.c.state.in_([s.value for s in OPEN]),
            )
            .exists()
        )
        return c.execute(
            tickets.update()
            .where(
                tickets.c.job_id == job_id,
                tickets.c.study == study,
                tickets.c.kind == TicketKind.FINALIZE.value,
                tickets.c.state == TicketState.PENDING.value,
                tickets.c.released.is_(False),
                ~open_trials,
            )
            .values(released=True, enqueued_at=sa.func.now())
            .returning(tickets.c.id)
        ).scalar()

    def complete_job_if_done(self, job_id: str) -> bool:
        open_tickets = (
            sa.select(tickets.c.id)
            .where(tickets.c.job_id == job_id, tickets.c.state.in_([s.value for s in OPEN]))
            .exists()
        )
        with self.engine.begin() as c:
            return bool(
                c.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, jobs.c.state.in_([s.value for s in ACTIVE]), ~open_tickets)
                    .values(state=JobState.SUCCEEDED.value, updated_at=sa.func.now())
                ).rowcount
            )

    def mark_enqueued(self, ticket_ids: Iterable[int]) -> None:
        ids = list(ticket_ids)
        if ids:
            with self.engine.begin() as c:
                c.execute(tickets.update().where(tickets.c.id.in_(ids)).values(enqueued_at=sa.func.now()))

    # -- reaping ------------------------------------------------------------------------------------------

    def take_expired(self, job_id: str) -> list[Expired]:
        """Atomically take back the job's tickets whose lease ran out; only one reaper gets each."""
        # A reaper that died while settling leaves REAPING tickets; their own lease lets another finish.
        with self.engine.begin() as c:
            rows = c.execute(
                tickets.update()
                .where(
                    tickets.c.job_id == job_id,
                    tickets.c.state.in_([TicketState.CLAIMED.value, TicketState.REAPING.value]),
                    tickets.c.lease_until < sa.func.now(),
                )
                .values(state=TicketState.REAPING.value, lease_until=from_now(60))
                .returning(tickets.c.id, tickets.c.study, tickets.c.kind, tickets.c.trial_number)
            ).all()
        return [Expired(r.id, job_id, r.study, TicketKind(r.kind), r.trial_number) for r in rows]

    def settle(self, expired: Expired, finished_outcome: str | None) -> None:
        """A taken-back ticket is done if its trial finished on its own, else pending again."""
        values: dict[str, Any] = (
            {"state": TicketState.DONE.value, "outcome": finished_outcome, "finished_at": sa.func.now()}
            if finished_outcome
            else {"state": TicketState.PENDING.value, "trial_number": None, "enqueued_at": None}
        )
        with self.engine.begin() as c:
            c.execute(
                tickets.update()
                .where(tickets.c.id == expired.ticket_id, tickets.c.state == TicketState.REAPING.value)
                .values(lease_until=None, **values)
            )

    def live_trials(self, job_id: str) -> set[tuple[str, int]]:
        """(study, trial number) of trials held under a live lease."""
        q = sa.select(tickets.c.study, tickets.c.trial_number).where(
            tickets.c.job_id == job_id,
            tickets.c.state == TicketState.CLAIMED.value,
            tickets.c.trial_number.is_not(None),
        )
        with self.engine.connect() as c:
            return {(s, n) for s, n in c.execute(q)}

    def stale_pending(self, job_id: str, grace_s: float) -> list[tuple[int, str]]:
        """Released pending tickets not (re)sent for ``grace_s``: their message may be gone."""
        q = sa.select(tickets.c.id, tickets.c.kind).where(
            tickets.c.job_id == job_id,
            tickets.c.state == TicketState.PENDING.value,
            tickets.c.released.is_(True),
            sa.or_(tickets.c.enqueued_at.is_(None), tickets.c.enqueued_at < sa.func.now() - interval(grace_s)),
        )
        with self.engine.connect() as c:
            return [(i, k) for i, k in c.execute(q)]

    # -- what MLflow is owed ------------------------------------------------------------------------------

    def _owed(self):
        """Studies MLflow is owed and that will not change any more: the study was finalized (its winner
        recorded), or its job ended and no trial of it is still measuring. A study being tuned is not owed yet."""
        finalized = (
            sa.select(tickets.c.id)
            .where(
                tickets.c.job_id == studies.c.job_id,
                tickets.c.study == studies.c.name,
                tickets.c.kind == TicketKind.FINALIZE.value,
                tickets.c.state == TicketState.DONE.value,  # not one a cancel closed
            )
            .exists()
        )
        # of an ended job, a ticket still claimed is a trial still measuring (a cancel lets it finish)
        measuring = (
            sa.select(tickets.c.id)
            .where(
                tickets.c.job_id == studies.c.job_id,
                tickets.c.study == studies.c.name,
                tickets.c.state.in_([s.value for s in OPEN]),
            )
            .exists()
        )
        ended = jobs.c.state.in_([JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value])
        return finalized, studies.c.mlflow_synced.is_(False) & ((ended & ~measuring) | finalized)

    def mlflow_owed(self, limit: int = 20) -> list[dict[str, Any]]:
        """Up to ``limit`` studies MLflow is owed (oldest job first), each with its job's name, state,
        hardware and spec, and whether the study was finalized."""
        finalized, owed = self._owed()
        q = (
            sa.select(
                studies.c.job_id,
                studies.c.name.label("study"),
                studies.c.problem,
                studies.c.mlflow_run_id,
                jobs.c.name.label("job_name"),
                jobs.c.state.label("job_state"),
                jobs.c.hardware,
                jobs.c.spec,
                finalized.label("finalized"),
            )
            .join(jobs, jobs.c.id == studies.c.job_id)
            .where(owed)
            .order_by(jobs.c.created_at, studies.c.name)
            .limit(limit)
        )
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    @contextmanager
    def mlflow_sync_lock(self, job_id: str, study: str) -> Iterator[Callable[[str | None], None] | None]:
        """Hold the right to write a study's owed MLflow runs, so two workers' syncs never write one twice.
        Yields None when another holds it or the study is no longer owed; else a ``done(run_id)`` to call
        once MLflow holds everything, which marks the study synced when the lock is let go."""
        with self.engine.connect() as c, c.begin():
            key = f"cotune-mlflow:{job_id}:{study}"
            got = c.execute(sa.select(sa.func.pg_try_advisory_xact_lock(sa.func.hashtext(key)))).scalar()
            still_owed = (
                c.execute(
                    sa.select(studies.c.mlflow_synced).where(studies.c.job_id == job_id, studies.c.name == study)
                ).scalar()
                is False
            )
            if not (got and still_owed):
                yield None
                return
            marked: list[str | None] = []
            yield marked.append
            if marked:
                c.execute(
                    studies.update()
                    .where(studies.c.job_id == job_id, studies.c.name == study)
                    .values(mlflow_synced=True, mlflow_run_id=sa.func.coalesce(marked[0], studies.c.mlflow_run_id))
                )

    def mark_mlflow_synced(self, job_id: str, study: str) -> None:
        """The worker that finalized the study wrote all of it to MLflow itself."""
        with self.engine.begin() as c:
            c.execute(
                studies.update().where(studies.c.job_id == job_id, studies.c.name == study).values(mlflow_synced=True)
            )

    # -- the job record -----------------------------------------------------------------------------------

    def record(self, job_id: str) -> dict[str, Any]:
        """The job as scripts and the API see it: state, progress by trial outcome, studies, error."""
        job = self.job(job_id)
        counts = self.ticket_counts(job_id)
        trial = {(s, o): n for (k, s, o), n in counts.items() if k == TicketKind.TRIAL.value}
        done = {o: n for (s, o), n in trial.items() if s == TicketState.DONE.value}
        # why trials were not measured: exhausted, stalled, deadline, cancelled
        skipped_by = {o: n for o, n in done.items() if o not in ("ok", "fail")}
        cancelled = sum(n for (s, _), n in trial.items() if s == TicketState.CANCELLED)
        if cancelled:
            skipped_by["cancelled"] = cancelled
        rows = self.studies(job_id)
        _, owed = self._owed()
        with self.engine.connect() as c:
            owed_now = c.execute(
                sa.select(sa.func.count())
                .select_from(studies.join(jobs, jobs.c.id == studies.c.job_id))
                .where(studies.c.job_id == job_id, owed)
            ).scalar()
        return {
            "id": job["id"],
            "name": job["name"],
            "state": job["state"],
            "hardware": job["hardware"],
            "created_at": _iso(job["created_at"]),
            "updated_at": _iso(job["updated_at"]),
            "deadline": _iso(job["deadline"]),
            "error": job["error"],
            "mlflow_setting": job["mlflow_setting"],
            "trials": {
                "requested": sum(trial.values()),
                "finished": done.get("ok", 0) + done.get("fail", 0),
                "failed": done.get("fail", 0),
                "running": sum(n for (s, _), n in trial.items() if s in (TicketState.CLAIMED, TicketState.REAPING)),
                "pending": sum(n for (s, _), n in trial.items() if s == TicketState.PENDING),
                "skipped": sum(skipped_by.values()),
                "skipped_by": skipped_by,
            },
            "studies": [
                {
                    "name": s["name"],
                    "problem": json.loads(s["problem"]),
                    "budget": s["budget"],
                    "mlflow_run_id": s["mlflow_run_id"],
                    "mlflow_synced": s["mlflow_synced"],
                }
                for s in rows
            ],
            # studies whose runs MLflow holds in full, and those it is owed (written by the workers' MLflow
            # sync once the tracking server answers); the rest are still being tuned
            "mlflow": {"studies": len(rows), "synced": sum(s["mlflow_synced"] for s in rows), "owed": owed_now},
        }


def new_job_id() -> str:
    return f"job-{secrets.token_hex(6)}"


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
