"""Where results go. Read once, in order: CLI flag > environment > job spec > defaults."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from cotune.tuner.errors import CotuneError
from cotune.tuner.spec.redact import Redactor

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


class SettingsError(CotuneError):
    """A setting in the environment is malformed or out of its range; the message names it."""


DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_SERVICE_STORAGE = "postgresql+psycopg2://postgres@127.0.0.1:5432/cotune"
DEFAULT_SERVICE_MLFLOW = "http://127.0.0.1:5000"
MLFLOW_SETTING = "MLFLOW_TRACKING_URI"  # what a job record names instead of the URL itself
MIN_TOKEN_CHARS = 32
# Secrets that reach the service through the environment without being part of one of its URLs: MLflow's
# own credentials for a tracking server behind authentication.
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@dataclass(frozen=True)
class ServiceSettings:
    """The service's settings, all from the environment so workers, the API and the CLI agree.

    ``lease_s`` bounds how long a dead worker's trial stays RUNNING: its heartbeat renews the lease every
    ``lease_s / 3`` and a reaper on a live worker takes the trial back once it runs out.

    The server-side resources (broker, storage, MLflow) come from here only; a request never names one.
    The tokens and every URL's password stay out of repr, logs, job records and responses
    (:meth:`redactor`, docs/service.md).
    """

    broker_url: str = DEFAULT_BROKER
    result_backend: str = DEFAULT_BROKER
    storage: str = DEFAULT_SERVICE_STORAGE
    mlflow_tracking_uri: str = DEFAULT_SERVICE_MLFLOW
    api_token: str | None = field(default=None, repr=False)
    api_read_token: str | None = field(default=None, repr=False)
    public_reads: bool = False  # only `cotune api --public-reads` sets it
    lease_s: float = 30.0
    reap_interval_s: float = 5.0
    task_time_limit_s: float = 3600.0
    max_body_bytes: int = 1_000_000
    max_problems: int = 256
    max_trials_per_problem: int = 5_000
    max_trials_per_job: int = 50_000
    hardware: tuple[str, ...] = ()  # hardware kinds accepted besides cpu and the recorded GPU profiles
    submit_procs: int = 2
    max_waiting_submits: int = 32
    submit_stale_s: float = 600.0
    other_secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def visibility_timeout_s(self) -> float:
        # Redis re-delivers an unacknowledged message after this; it must exceed the longest task.
        return self.task_time_limit_s + 600.0

    @property
    def task_soft_time_limit_s(self) -> float:
        # The gap to the hard limit is the time a cut task has to kill its candidate and record the failed
        # trial before Celery kills the pool process: a tenth of the limit, at least 5 s, at most a minute.
        limit = self.task_time_limit_s
        return limit - min(60.0, max(5.0, limit * 0.1))

    def redactor(self) -> Redactor:
        """Masks every credential of these settings (and any URL's) in a text: see :mod:`.redact`."""
        urls = (self.broker_url, self.result_backend, self.storage, self.mlflow_tracking_uri)
        return Redactor.of(urls, (self.api_token, self.api_read_token, *self.other_secrets))

    def known_hardware(self) -> list[str]:
        """The hardware kinds a job may target: ``cpu``, every GPU with a recorded device profile
        (tuner/device/recorded/), and those the operator lists in ``COTUNE_HARDWARE``."""
        from cotune.tuner.device.profiles import CPU_KIND, PROFILES_DIR

        return sorted({CPU_KIND, *(p.stem for p in PROFILES_DIR.glob("*.json")), *self.hardware})

    def tracking_uri(self, setting: str | None) -> str | None:
        """The MLflow URI that a job record's setting name stands for (None: the job logs to no MLflow)."""
        if setting is None:
            return None
        if setting != MLFLOW_SETTING:
            raise SettingsError(f"a job names MLflow setting {setting!r}; this service knows only {MLFLOW_SETTING}")
        return self.mlflow_tracking_uri

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> ServiceSettings:
        env = os.environ if env is None else env
        broker = env.get("COTUNE_BROKER_URL", DEFAULT_BROKER)
        hardware = tuple(h.strip() for h in env.get("COTUNE_HARDWARE", "").split(",") if h.strip())
        for kind in hardware:
            if not _KIND.fullmatch(kind):
                raise SettingsError(f"COTUNE_HARDWARE: {kind!r} is not a hardware kind (lower-case slug)")
        settings = cls(
            broker_url=broker,
            result_backend=env.get("COTUNE_RESULT_BACKEND", broker),
            storage=env.get("COTUNE_STORAGE", DEFAULT_SERVICE_STORAGE),
            mlflow_tracking_uri=env.get(MLFLOW_SETTING, DEFAULT_SERVICE_MLFLOW),
            api_token=env.get("COTUNE_API_TOKEN") or None,
            api_read_token=env.get("COTUNE_API_READ_TOKEN") or None,
            lease_s=_float(env, "COTUNE_LEASE_S", 30.0, 0.3, 86400.0),
            reap_interval_s=_float(env, "COTUNE_REAP_INTERVAL_S", 5.0, 0.1, 3600.0),
            task_time_limit_s=_float(env, "COTUNE_TASK_TIME_LIMIT_S", 3600.0, 10.0, 7 * 86400.0),
            max_body_bytes=_int(env, "COTUNE_API_MAX_BODY_BYTES", 1_000_000, 1024, 100_000_000),
            max_problems=_int(env, "COTUNE_MAX_PROBLEMS", 256, 1, 100_000),
            max_trials_per_problem=_int(env, "COTUNE_MAX_TRIALS_PER_PROBLEM", 5_000, 1, 1_000_000),
            max_trials_per_job=_int(env, "COTUNE_MAX_TRIALS_PER_JOB", 50_000, 1, 10_000_000),
            hardware=hardware,
            submit_procs=_int(env, "COTUNE_API_SUBMIT_PROCS", 2, 1, 64),
            max_waiting_submits=_int(env, "COTUNE_API_MAX_WAITING_SUBMITS", 32, 0, 10_000),
            submit_stale_s=_float(env, "COTUNE_SUBMIT_STALE_S", 600.0, 10.0, 86400.0),
            other_secrets=tuple(env[name] for name in SECRET_ENV if env.get(name)),
        )
        return replace(settings, **overrides) if overrides else settings

    def token_problems(self) -> list[str]:
        """Why these tokens are not fit to expose the API (empty: they are)."""
        problems = []
        if self.api_token is None:
            problems.append("COTUNE_API_TOKEN is not set")
        for name, token in (("COTUNE_API_TOKEN", self.api_token), ("COTUNE_API_READ_TOKEN", self.api_read_token)):
            if token is not None and len(token) < MIN_TOKEN_CHARS:
                problems.append(f"{name} has {len(token)} characters, fewer than {MIN_TOKEN_CHARS}")
        if self.api_token and self.api_token == self.api_read_token:
            problems.append("COTUNE_API_READ_TOKEN equals COTUNE_API_TOKEN")
        return problems


_KIND = re.compile(r"[a-z0-9][a-z0-9-]{0,99}")


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    return _parse(env, name, float, default, lo, hi)


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    return int(_parse(env, name, int, default, lo, hi))


def _parse(env: Mapping[str, str], name: str, kind: type, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: not {'an integer' if kind is int else 'a number'}") from None
    if not lo <= value <= hi:  # NaN fails this too
        raise SettingsError(f"{name}={raw}: must lie between {lo:g} and {hi:g}")
    return value
