"""Opening the Optuna storage named by settings, with one clear error when it cannot be reached."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cotune.tuner.errors import NotFoundError, StorageError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage


def open_storage(url: str, *, create: bool = True) -> BaseStorage:
    """Open (with ``create``, create) the storage. Read-only callers pass ``create=False``.

    SQLite and other databases get Optuna's RDB storage; PostgreSQL gets Optuna's journal storage with the
    log in a table (:mod:`cotune.tuner.store.pg_journal`), the faster of the two for the service's many writers.
    """
    import optuna

    if not create and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise NotFoundError(f"no tuning results at {url} (run `cotune tune` first, or pass --storage)")
    import sqlalchemy.exc

    try:
        if url.startswith("postgresql"):
            from cotune.tuner.store.pg import engine_for
            from cotune.tuner.store.pg_journal import PostgresJournalBackend

            return optuna.storages.JournalStorage(PostgresJournalBackend(engine_for(url)))
        return optuna.storages.RDBStorage(url)
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"cannot open Optuna storage {url}: {first}") from None


def job_studies(storage_url: str, job: str) -> list[Any]:
    """Studies of a job, as Optuna ``FrozenStudy`` summaries, in creation order."""
    import optuna

    storage = open_storage(storage_url, create=False)
    found = [s for s in optuna.get_all_study_summaries(storage) if s.user_attrs.get("job") == job]
    if not found:
        raise NotFoundError(f"no studies for job {job!r} in {storage_url}")
    return found
