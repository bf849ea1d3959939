"""Tables, states and claim records of the service's job store (see :mod:`cotune.tuner.store.jobs`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import sqlalchemy as sa


class JobState(enum.StrEnum):
    SUBMITTING = "submitting"  # recorded, its studies and MLflow runs being made; no ticket is queued yet
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (JobState.QUEUED, JobState.RUNNING)  # workers run tickets of these jobs only
ENDABLE = (JobState.SUBMITTING, *ACTIVE)


class TicketKind(enum.StrEnum):
    TRIAL = "trial"
    FINALIZE = "finalize"


class TicketState(enum.StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    REAPING = "reaping"  # a reaper took it back from a dead worker and is settling its trial
    DONE = "done"
    CANCELLED = "cancelled"
    ERROR = "error"


OPEN = (TicketState.PENDING, TicketState.CLAIMED, TicketState.REAPING)
MAX_ATTEMPTS = 3  # a ticket whose task raised this many times fails the job with its error

_meta = sa.MetaData()

jobs = sa.Table(
    "cotune_jobs",
    _meta,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("hardware", sa.String(100), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    # The name of the server setting that says where its MLflow runs go (MLFLOW_TRACKING_URI), never the
    # URL itself: a record holds no credential, and a worker resolves the name from its own settings.
    sa.Column("mlflow_setting", sa.String(64), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
)

studies = sa.Table(
    "cotune_studies",
    _meta,
    sa.Column("job_id", sa.String(40), sa.ForeignKey("cotune_jobs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.String(500), primary_key=True),
    sa.Column("problem", sa.Text, nullable=False),
    sa.Column("budget", sa.Integer, nullable=False),
    sa.Column("mlflow_run_id", sa.String(64), nullable=True),
    # MLflow holds all it will of this study: every finished trial's child run, the summary, the parent run
    # closed. False while owed; workers' MLflow sync (cotune.worker.mlflow_sync) writes what is owed whenever
    # the tracking server answers. Rows of tables made before the column existed count as written.
    sa.Column("mlflow_synced", sa.Boolean, nullable=False, server_default=sa.true()),
)

tickets = sa.Table(
    "cotune_tickets",
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(40), sa.ForeignKey("cotune_jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("study", sa.String(500), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("released", sa.Boolean, nullable=False),  # finalize tickets wait until the study's trials end
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("worker", sa.String(200), nullable=True),
    sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
    sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("trial_number", sa.Integer, nullable=True),
    sa.Column("outcome", sa.String(32), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Index("ix_cotune_tickets_job_state", "job_id", "state"),
    # a trial ticket's ordinal is counted on it (JobStore.claim)
    sa.Index("ix_cotune_tickets_study_order", "job_id", "study", "kind", "id"),
)

# A program (Kernel.program_key) a trial of a study is measuring or has measured: its primary key makes the
# reservation atomic, so two workers never measure one program (see cotune.tuner.store.reservations).
reservations = sa.Table(
    "cotune_reservations",
    _meta,
    sa.Column("job_id", sa.String(40), primary_key=True),
    sa.Column("study", sa.String(500), primary_key=True),
    sa.Column("program", sa.Text, primary_key=True),
    sa.Column("trial_number", sa.Integer, nullable=False),
    sa.Column("reserved_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(["job_id", "study"], ["cotune_studies.job_id", "cotune_studies.name"], ondelete="CASCADE"),
)


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one ticket; ``attempt`` fences out a holder whose lease was taken back."""

    ticket_id: int
    job_id: str
    study: str
    kind: TicketKind
    attempt: int
    past_deadline: bool = False
    # a trial ticket's place among its study's trial tickets (0, 1, ...): what its sampler seed derives from
    ordinal: int | None = None


@dataclass(frozen=True)
class Expired:
    ticket_id: int
    job_id: str
    study: str
    kind: TicketKind
    trial_number: int | None


def create_tables(engine: sa.Engine) -> None:
    _meta.create_all(engine, checkfirst=True)
    with engine.begin() as c:
        c.execute(sa.text(_FORGET_MLFLOW_URIS))


# Tables made by versions that stored the MLflow URL (credentials included) in the job record: the column
# becomes the setting name, and the URLs are gone. The advisory lock serialises processes starting at once.
_FORGET_MLFLOW_URIS = """
DO $$ BEGIN
  PERFORM pg_advisory_xact_lock(hashtext('cotune_jobs.mlflow_setting'));
  IF EXISTS (SELECT 1 FROM information_schema.columns
             WHERE table_name = 'cotune_jobs' AND column_name = 'mlflow_uri' AND table_schema = current_schema()) THEN
    ALTER TABLE cotune_jobs DROP COLUMN IF EXISTS mlflow_setting;
    ALTER TABLE cotune_jobs RENAME COLUMN mlflow_uri TO mlflow_setting;
    UPDATE cotune_jobs SET mlflow_setting = 'MLFLOW_TRACKING_URI' WHERE mlflow_setting IS NOT NULL;
    ALTER TABLE cotune_jobs ALTER COLUMN mlflow_setting TYPE varchar(64);
  END IF;
  -- tables made before tickets had an ordinal: the index that counts it (checked first, as only the
  -- tables' owner may create it, and a service may run as a role that is not)
  IF NOT EXISTS (SELECT 1 FROM pg_indexes
                 WHERE indexname = 'ix_cotune_tickets_study_order' AND schemaname = current_schema()) THEN
    CREATE INDEX ix_cotune_tickets_study_order ON cotune_tickets (job_id, study, kind, id);
  END IF;
  -- tables made before MLflow writes could be owed
  IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                 WHERE table_name = 'cotune_studies' AND column_name = 'mlflow_synced'
                   AND table_schema = current_schema()) THEN
    ALTER TABLE cotune_studies ADD COLUMN mlflow_synced boolean NOT NULL DEFAULT true;
  END IF;
END $$;
"""
