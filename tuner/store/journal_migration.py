"""Studies that cotune's service kept before 2026-12-05, in its own journal table, moved into Optuna's tables.

Until then the service stored its Optuna studies as Optuna's journal storage with the log in a PostgreSQL
table (``cotune_optuna_journal``): optuna-dashboard could not open it, and every process replayed the whole
log when it opened the storage. Now the service uses Optuna's RDB storage in the same database.

A database that still has the journal table is refused (:func:`refuse_journal`) until an operator runs
``cotune migrate-journal`` (:func:`migrate_journal`) once, with the service's API and workers stopped. It
copies every study with Optuna's ``copy_study`` (directions, attributes, every trial with its number, state,
params, values, attributes and times), checks the copies, and renames the journal table
``cotune_optuna_journal_migrated_<time>`` (kept until the operator drops it). A run stopped half-way leaves
the journal in place; the next run copies again every study it finds, over its earlier partial copy.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cotune.tuner.errors import StorageError
from cotune.tuner.store.pg import safe_url
from optuna.storages import BaseStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import FrozenTrial

JOURNAL_TABLE = "cotune_optuna_journal"
_meta = sa.MetaData()
journal = sa.Table(
    JOURNAL_TABLE,
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("log", sa.Text, nullable=False),
)
_APPEND_LOCK = 0x636F74756E65  # the older version's key of the advisory lock that ordered appends
_MIGRATE_LOCK = 0x636F74756E6532  # one migration at a time


class LegacyJournalBackend(BaseJournalBackend):
    """The journal backend of cotune before 2026-12-05, unchanged, so that what it wrote reads back exactly
    (and tests and ``bench/service.py`` can write a journal as it did). Appends took a transaction-scoped
    advisory lock and numbered their entries after the last one, so log numbers were dense and ordered."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        _meta.create_all(engine, checkfirst=True)

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        q = sa.select(journal.c.log).where(journal.c.id >= log_number_from).order_by(journal.c.id)
        with self.engine.connect() as c:
            return [json.loads(row[0]) for row in c.execute(q)]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with self.engine.begin() as c:
            c.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK})
            first = c.execute(sa.select(sa.func.coalesce(sa.func.max(journal.c.id), -1))).scalar_one() + 1
            c.execute(journal.insert(), [{"id": first + i, "log": json.dumps(log)} for i, log in enumerate(logs)])


def has_journal(engine: sa.Engine) -> bool:
    with engine.connect() as c:
        return c.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": JOURNAL_TABLE}).scalar_one()


def refuse_journal(engine: sa.Engine, url: str) -> None:
    """Stop a process from using a database whose studies are still in the journal table: it would see
    none of them, and an older worker still writing there would be lost."""
    if has_journal(engine):
        raise StorageError(
            f"the Optuna studies in {safe_url(url)} are still in the journal table of cotune before 2026-12-05 "
            f"({JOURNAL_TABLE}); stop the service's API and workers, run `cotune migrate-journal` once with "
            "COTUNE_STORAGE set to this database, then start them again (docs/service.md, 'Optuna storage')"
        )


@dataclass(frozen=True)
class MigrationReport:
    studies: int
    trials: int
    seconds: float
    kept_as: str | None  # the journal table's new name; None when there was nothing to migrate


def migrate_journal(url: str) -> MigrationReport:
    """Copy every study of the journal table into Optuna's RDB storage in the same database, check the
    copies, then rename the journal table. Refuses (and leaves the journal as it is) if the journal grows
    meanwhile: a process of the older version is still writing."""
    import optuna
    from cotune.tuner.store.pg import engine_for
    from cotune.tuner.store.studies import postgres_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study copied
    start = time.perf_counter()
    engine = engine_for(url)
    if not has_journal(engine):
        return MigrationReport(0, 0, 0.0, None)
    with engine.connect() as lock:
        lock.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATE_LOCK})
        try:
            if not has_journal(engine):  # another migration finished while this one waited
                return MigrationReport(0, 0, time.perf_counter() - start, None)
            last = _last_entry(engine)
            source = optuna.storages.JournalStorage(LegacyJournalBackend(engine))
            target = postgres_storage(url, allow_journal=True)
            studies = source.get_all_studies()
            trials = 0
            for study in studies:
                trials += _copy(source, target, study.study_name)
            kept_as = _retire(engine, last)
        finally:
            lock.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATE_LOCK})
            lock.commit()
    return MigrationReport(len(studies), trials, time.perf_counter() - start, kept_as)


def _last_entry(engine: sa.Engine) -> int:
    with engine.connect() as c:
        return c.execute(sa.select(sa.func.coalesce(sa.func.max(journal.c.id), -1))).scalar_one()


def _copy(source: BaseStorage, target: BaseStorage, name: str) -> int:
    """Copy one study (over an earlier, interrupted copy of it) and check it; returns its trial count."""
    import optuna

    try:
        optuna.delete_study(study_name=name, storage=target)
    except KeyError:
        pass  # not copied before
    optuna.copy_study(from_study_name=name, from_storage=source, to_storage=target)
    want = source.get_all_trials(source.get_study_id_from_name(name), deepcopy=False)
    got = target.get_all_trials(target.get_study_id_from_name(name), deepcopy=False)
    if [_essence(t) for t in got] != [_essence(t) for t in want]:
        raise StorageError(f"study {name!r} did not copy faithfully; the journal was left as it is")
    return len(want)


def _essence(t: FrozenTrial) -> tuple:
    return (t.number, t.state, t.params, t.values, t.user_attrs, t.system_attrs, t.datetime_start)


def _retire(engine: sa.Engine, last: int) -> str:
    """Rename the journal table, unless it grew since the copy began (an older process still writing)."""
    kept_as = f"{JOURNAL_TABLE}_migrated_{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    with engine.begin() as c:
        c.execute(sa.text(f"LOCK TABLE {JOURNAL_TABLE} IN ACCESS EXCLUSIVE MODE"))
        now = c.execute(sa.select(sa.func.coalesce(sa.func.max(journal.c.id), -1))).scalar_one()
        if now != last:
            raise StorageError(
                f"the journal grew by {now - last} entries during the migration: a worker or API of the older "
                "version is still running. Stop it and run `cotune migrate-journal` again"
            )
        c.execute(sa.text(f'ALTER TABLE {JOURNAL_TABLE} RENAME TO "{kept_as}"'))
    return kept_as
