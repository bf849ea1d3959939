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
