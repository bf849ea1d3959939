"""Program reservations: a service trial reserves its config's program before measuring it, atomically in
PostgreSQL, so two workers never measure one program of a study.

Reading the study cannot promise that. Optuna writes a trial in steps (the trial, then each param), so a
worker that looks between two steps sees a RUNNING trial without its config, and two workers that ask the
same config at the same moment each see the other's trial only after deciding. A reservation is one row
keyed by (job, study, program), inserted with ``ON CONFLICT``: of two workers, exactly one gets it, and the
other is told which trial holds it.

A reservation stays after its trial ends: a measured program is measured. One whose trial was failed as
``worker_lost`` (the reaper found its worker gone) is released by the reaper, so the program can be measured
again; if the reaper stopped before releasing it, the next trial that wants the program takes it over, once
its study shows the holder lost. Local ``cotune tune`` runs one process per study and reserves nothing.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa
from cotune.tuner.store.job_tables import reservations
from sqlalchemy.dialects.postgresql import insert


@dataclass(frozen=True)
class ProgramReservations:
    """The reservations of one study of a service job."""

    engine: sa.Engine
    job_id: str
    study: str

    def _of_study(self) -> tuple[sa.ColumnElement[bool], ...]:
        return reservations.c.job_id == self.job_id, reservations.c.study == self.study

    def reserve(self, program: str, trial_number: int, lost: Collection[int] = ()) -> int | None:
        """Reserve ``program`` for the trial. None when the trial holds it now; otherwise the number of the
        trial that does. A reservation held by one of the ``lost`` trials (failed as worker_lost) is taken
        over."""
        row = reservations.c
        stmt = (
            insert(reservations)
            .values(job_id=self.job_id, study=self.study, program=program, trial_number=trial_number)
            .on_conflict_do_update(
                index_elements=[row.job_id, row.study, row.program],
                set_={"trial_number": trial_number, "reserved_at": sa.func.now()},
                where=sa.or_(row.trial_number == trial_number, row.trial_number.in_(list(lost))),
            )
            .returning(row.trial_number)
        )
        with self.engine.begin() as c:
            if c.execute(stmt).first() is not None:
                return None
            return c.execute(sa.select(row.trial_number).where(*self._of_study(), row.program == program)).scalar_one()

    def held(self, among: Collection[int]) -> dict[str, int]:
        """Program -> trial number, for the reservations these trials hold (the study's running trials)."""
        if not among:
            return {}
        q = sa.select(reservations.c.program, reservations.c.trial_number).where(
            *self._of_study(), reservations.c.trial_number.in_(list(among))
        )
        with self.engine.connect() as c:
            return {program: number for program, number in c.execute(q)}

    def release(self, trial_numbers: Collection[int]) -> int:
        """Drop the reservations these trials hold (trials failed as worker_lost); returns how many."""
        if not trial_numbers:
            return 0
        with self.engine.begin() as c:
            return c.execute(
                reservations.delete().where(*self._of_study(), reservations.c.trial_number.in_(list(trial_numbers)))
            ).rowcount
