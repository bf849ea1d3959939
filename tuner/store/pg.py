"""PostgreSQL engines and server-side time, shared by the job store and Optuna's journal storage."""

from __future__ import annotations

import sqlalchemy as sa
from cotune.tuner.errors import StorageError
from sqlalchemy.engine import Engine


def interval(seconds: float) -> sa.ColumnElement:
    return sa.func.make_interval(0, 0, 0, 0, 0, 0, float(seconds))


def from_now(seconds: float) -> sa.ColumnElement:
    """A time ``seconds`` from now on the database's clock, so worker clocks need not agree."""
    return sa.func.now() + interval(seconds)


_engines: dict[str, Engine] = {}


def engine_for(url: str) -> Engine:
    """One engine (one connection pool) per database URL and process, shared by the job store and Optuna."""
    if url not in _engines:
        _engines[url] = _engine(url)
    return _engines[url]


def _engine(url: str) -> Engine:
    """An engine on the database, which is created first if the server has no database of that name."""
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    try:
        with engine.connect():
            return engine
    except sa.exc.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise StorageError(f"cannot reach the job store {safe_url(url)}: {first_line(exc)}") from None
    admin = sa.create_engine(
        sa.engine.make_url(url).set(database="postgres"),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5},
    )
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{sa.engine.make_url(url).database}"'))
    admin.dispose()
    return engine


def safe_url(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", exc) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
