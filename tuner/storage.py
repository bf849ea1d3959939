"""Opening the Optuna storage named by settings, with one clear error when it cannot be reached."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tuner.errors import NotFoundError, StorageError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage


def open_storage(url: str, *, create: bool = True) -> BaseStorage:
    """Open (with ``create``, create) the storage. Read-only callers pass ``create=False``."""
    import optuna

    if not create and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise NotFoundError(f"no tuning results at {url} (run `cotune tune` first, or pass --storage)")
    import sqlalchemy.exc

    engine_kwargs: dict = {}
    if url.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": 5}, "pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"cannot open Optuna storage {url}: {first}") from None
