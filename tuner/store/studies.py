"""Opening the Optuna storage named by settings, with one clear error when it cannot be reached.

Locally that is a SQLite file; for the service, PostgreSQL. Both get Optuna's own RDB storage, so
optuna-dashboard (and anything else that speaks Optuna) opens the service's studies as they are, and a
process reads only what it asks for: a study's trials, a job's studies, never a log of every change.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cotune.tuner.errors import NotFoundError, StorageError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage, RDBStorage

_rdb: dict[str, RDBStorage] = {}
_rdb_lock = threading.Lock()
# any constant: the advisory lock under which one process at a time creates Optuna's tables
_CREATE_LOCK = 0x636F74756E6531


def open_storage(url: str, *, create: bool = True) -> BaseStorage:
    """Open (with ``create``, create) the storage. Read-only callers pass ``create=False``.

    A PostgreSQL storage is opened once per process and URL, and shared by the threads that use it (Optuna's
    RDB storage keeps one session per thread). One that still holds studies in the journal table of cotune
    before 2026-12-05 is refused until ``cotune migrate-journal`` has moved them.
    """
    import optuna

    if not create and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise NotFoundError(f"no tuning results at {url} (run `cotune tune` first, or pass --storage)")
    import sqlalchemy.exc

    try:
        if url.startswith("postgresql"):
            return postgres_storage(url)
        return optuna.storages.RDBStorage(url)
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"cannot open Optuna storage {_safe(url)}: {first}") from None


def postgres_storage(url: str, *, allow_journal: bool = False) -> RDBStorage:
    """Optuna's RDB storage on the PostgreSQL database (made if the server has none of that name), this
    process's one for the URL. ``allow_journal``: for the migration only, which opens it beside the journal."""
    from cotune.tuner.store.journal_migration import refuse_journal
    from cotune.tuner.store.pg import engine_for

    with _rdb_lock:
        if url in _rdb:
            return _rdb[url]
        engine = engine_for(url)
        if not allow_journal:
            refuse_journal(engine, url)
        import optuna
        import sqlalchemy as sa

        # Optuna creates its tables and version row without a lock; processes starting at once on an empty
        # database would race on the same CREATE TABLE and INSERT.
        with engine.begin() as c:
            c.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CREATE_LOCK})
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs={"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}}
            )
        _rdb[url] = storage
        return storage


def job_studies(storage_url: str, job: str) -> list[Any]:
    """Studies of a job, as Optuna ``FrozenStudy`` objects (name and attributes, no trials), in creation order."""
    storage = open_storage(storage_url, create=False)
    found = sorted((s for s in storage.get_all_studies() if s.user_attrs.get("job") == job), key=lambda s: s._study_id)
    if not found:
        raise NotFoundError(f"no studies for job {job!r} in {_safe(storage_url)}")
    return found


def _safe(url: str) -> str:
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url
