"""Where results go. Read once, in order: CLI flag > environment > job spec > defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path("cotune-runs")


@dataclass(frozen=True)
class Settings:
    storage: str
    mlflow_tracking_uri: str
    runs_dir: Path

    @classmethod
    def resolve(
        cls,
        *,
        storage: str | None = None,
        mlflow_tracking_uri: str | None = None,
        spec_storage: str | None = None,
        spec_mlflow: str | None = None,
        env: Mapping[str, str] | None = None,
        runs_dir: Path = DEFAULT_DIR,
    ) -> Settings:
        env = os.environ if env is None else env
        return cls(
            storage=storage
            or env.get("COTUNE_STORAGE")
            or spec_storage
            or f"sqlite:///{(runs_dir / 'optuna.db').as_posix()}",
            mlflow_tracking_uri=mlflow_tracking_uri
            or env.get("MLFLOW_TRACKING_URI")
            or spec_mlflow
            or f"sqlite:///{(runs_dir / 'mlflow.db').as_posix()}",
            runs_dir=runs_dir,
        )


def ensure_parent_dir(url: str) -> None:
    """Create the folder of a local SQLite file; other URLs need nothing on disk."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_SERVICE_STORAGE = "postgresql+psycopg2://postgres@127.0.0.1:5432/cotune"
DEFAULT_SERVICE_MLFLOW = "http://127.0.0.1:5000"


@dataclass(frozen=True)
class ServiceSettings:
    """The service's settings, all from the environment so workers, the API and the CLI agree.

    ``lease_s`` bounds how long a dead worker's trial stays RUNNING: its heartbeat renews the lease every
    ``lease_s / 3`` and a reaper on a live worker takes the trial back once it runs out.
    """

    broker_url: str = DEFAULT_BROKER
    result_backend: str = DEFAULT_BROKER
    storage: str = DEFAULT_SERVICE_STORAGE
    mlflow_tracking_uri: str = DEFAULT_SERVICE_MLFLOW
    api_token: str | None = None
    lease_s: float = 30.0
    reap_interval_s: float = 5.0
    task_time_limit_s: float = 3600.0

    @property
    def visibility_timeout_s(self) -> float:
        # Redis re-delivers an unacknowledged message after this; it must exceed the longest task.
        return self.task_time_limit_s + 600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceSettings:
        env = os.environ if env is None else env
        broker = env.get("COTUNE_BROKER_URL", DEFAULT_BROKER)
        return cls(
            broker_url=broker,
            result_backend=env.get("COTUNE_RESULT_BACKEND", broker),
            storage=env.get("COTUNE_STORAGE", DEFAULT_SERVICE_STORAGE),
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI", DEFAULT_SERVICE_MLFLOW),
            api_token=env.get("COTUNE_API_TOKEN") or None,
            lease_s=float(env.get("COTUNE_LEASE_S", 30.0)),
            reap_interval_s=float(env.get("COTUNE_REAP_INTERVAL_S", 5.0)),
            task_time_limit_s=float(env.get("COTUNE_TASK_TIME_LIMIT_S", 3600.0)),
        )
