"""Service commands of the ``cotune`` CLI: submit, jobs, watch, wait, cancel, migrate-journal, worker, api.

``status``, ``best`` and ``export`` in :mod:`cotune.tuner.cli.main` accept a service job id as well as a local job name.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from cotune.tuner.cli.console import clean_errors, err, out
from cotune.tuner.device.profiles import CPU_KIND
from rich import box
from rich.markup import escape
from rich.table import Column, Table

TERMINAL = ("succeeded", "failed", "cancelled")


def is_service_job(job: str) -> bool:
    return job.startswith("job-")


def _service():
    from cotune.tuner.spec.settings import ServiceSettings
    from cotune.worker.dispatch import open_store

    settings = ServiceSettings.from_env()
    return settings, open_store(settings)


@clean_errors
def submit(
    spec: Path,
    hardware: Annotated[str, typer.Option(help="hardware kind the job runs on: cpu or a GPU slug")] = CPU_KIND,
) -> None:
    """Submit a job to the service; prints its id. Fails within seconds if the broker is down."""
    from cotune.tuner.spec.job import load_spec
    from cotune.worker.app import app as celery_app
    from cotune.worker.dispatch import submit as submit_job

    job_spec = load_spec(spec)
    settings, store = _service()
    print(submit_job(job_spec, celery_app, store, settings, hardware))


@clean_errors
def jobs(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the service's most recent jobs."""
    _, store = _service()
    records = [store.record(j["id"]) for j in store.jobs()]
    if as_json:
        print(json.dumps(records))
        return
    # A job id is copied into other commands: it is never cut or folded. At 80 columns the rest gives way:
    # a long name or hardware slug folds onto more lines (never an ellipsis), the time goes under the date.
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("job", no_wrap=True, min_width=max((len(r["id"]) for r in records), default=3))
    table.add_column("name", overflow="fold", min_width=10)
    table.add_column("state", no_wrap=True)
    table.add_column("hardware", overflow="fold")
    table.add_column("trials", no_wrap=True)
    table.add_column("created", min_width=10)
    for r in records:
        t = r["trials"]
        created = r["created_at"][:19].replace("T", " ")
        table.add_row(r["id"], r["name"], r["state"], r["hardware"], f"{t['finished']}/{t['requested']}", created)
    out.print(table)


def _print_error(record: dict[str, Any]) -> None:
    # the error is text, not markup: "pip install 'cotune[gpu]'" would lose its "[gpu]" as an unknown tag
    out.print(f"[red]error:[/red] {escape(record['error'])}", highlight=False)


def show_record(job: str, as_json: bool) -> None:
    _, store = _service()
    record = store.record(job)
    if as_json:
        print(json.dumps(record))
        return
    t = record["trials"]
    out.print(f"{record['id']} ({escape(record['name'])}): [bold]{record['state']}[/bold] on {record['hardware']}")
    out.print(
        f"trials: {t['finished']}/{t['requested']} finished, {t['failed']} failed, {t['running']} running, "
        f"{t['pending']} pending, {t['skipped']} skipped"
        + (f" ({', '.join(f'{why} {n}' for why, n in sorted(t['skipped_by'].items()))})" if t["skipped"] else "")
    )
    for s in record["studies"]:
        out.print(f"  {escape(s['name'])}  mlflow run {s['mlflow_run_id']}")
    out.print(f"mlflow: {mlflow_line(record['mlflow'])}")
    if record["error"]:
        _print_error(record)


def mlflow_line(m: dict[str, int]) -> str:
    """How much of the job MLflow holds: complete, owed (written once the server answers), or in progress."""
    if m["synced"] == m["studies"]:
        return f"complete ({m['studies']} of {m['studies']} studies)"
    parts = [f"{m['synced']} of {m['studies']} studies complete"]
    if m["owed"]:
        parts.append(f"{m['owed']} owed (the workers write them once the tracking server answers)")
    return ", ".join(parts)


@clean_errors
def watch(job: str, interval: float = 1.0) -> None:
    """Follow a job's progress across workers until it ends."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    _, store = _service()
    record = store.record(job)
    # the job id and the trial count stay whole at 80 columns; the state and its counts fold under themselves
    with Progress(
        TextColumn("{task.description}", table_column=Column(no_wrap=True)),
        BarColumn(bar_width=20),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        TextColumn("{task.fields[state]}", table_column=Column(overflow="fold")),
        TimeElapsedColumn(),
        console=out,
    ) as progress:
        task = progress.add_task(job, total=record["trials"]["requested"], state=record["state"])
        while True:
            record = store.record(job)
            t = record["trials"]
            progress.update(
                task,
                completed=t["finished"] + t["skipped"],
                state=f"{record['state']} ({t['running']} running, {t['failed']} failed)",
            )
            if record["state"] in TERMINAL:
                break
            time.sleep(interval)
    _exit_for(record)


@clean_errors
def wait(
    job: str,
    timeout: Annotated[float | None, typer.Option(help="give up after this many seconds (exit 2)")] = None,
    interval: float = 1.0,
) -> None:
    """Block until a job ends; exit 0 if it succeeded, 1 if it failed or was cancelled, 2 on timeout."""
    _, store = _service()
    deadline = time.monotonic() + timeout if timeout else None
    while (record := store.record(job))["state"] not in TERMINAL:
        if deadline is not None and time.monotonic() > deadline:
            out.print(f"{job} still {record['state']} after {timeout:g} s")
            raise typer.Exit(2)
        time.sleep(interval)
    out.print(f"{job} {record['state']}")
    _exit_for(record)


def _exit_for(record: dict[str, Any]) -> None:
    if record["state"] != "succeeded":
        if record["error"]:
            _print_error(record)
        raise typer.Exit(1)


@clean_errors
def migrate_journal() -> None:
    """Move the Optuna studies that cotune before 2026-12-05 kept in its journal table into Optuna's own
    tables (COTUNE_STORAGE). Stop the API and workers first; run once."""
    from cotune.tuner.spec.settings import ServiceSettings
    from cotune.tuner.store.journal_migration import migrate_journal as migrate

    report = migrate(ServiceSettings.from_env().storage)
    if report.kept_as is None:
        out.print("nothing to migrate: this database has no cotune journal table")
        return
    out.print(
        f"migrated {report.studies} {'study' if report.studies == 1 else 'studies'} ({report.trials} trials) in "
        f"{report.seconds:.1f} s; the journal is "
        f"kept as table {report.kept_as} (drop it once you no longer need it)"
    )


@clean_errors
def cancel(job: str) -> None:
    """Cancel a job: pending trials are dropped, trials being measured finish, the job is marked cancelled."""
    _, store = _service()
    if store.cancel(job):
        out.print(f"{job} cancelled")
    else:
        out.print(f"{job} had already ended ({store.job(job)['state']})")


@clean_errors
def worker(
    gpu: Annotated[int | None, typer.Option(help="physical GPU index this worker owns")] = None,
    queues: Annotated[str | None, typer.Option(help="extra queues, comma separated, e.g. cotune.cpu")] = None,
    loglevel: str = "INFO",
    name: Annotated[str | None, typer.Option(help="worker name (default cotune-<hardware>[-gpuN]@host)")] = None,
) -> None:
    """Start a Celery worker: one GPU (or the CPU), one task at a time, on its hardware's queue."""
    from cotune.tuner.device.profiles import gpu_name, queue_name, slugify
    from cotune.tuner.spec.redact import install_log_redaction
    from cotune.tuner.spec.settings import ServiceSettings

    install_log_redaction(ServiceSettings.from_env().redactor())  # Celery's and the reaper's lines
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        os.environ["COTUNE_DEVICE"] = "cuda"
        kind = slugify(gpu_name(gpu))
    else:
        kind = CPU_KIND
    wanted = [queue_name(kind)] + [q.strip() for q in (queues or "").split(",") if q.strip()]
    from cotune.worker.app import app as celery_app

    node = name or f"cotune-{kind}{'' if gpu is None else f'-gpu{gpu}'}@%h"
    out.print(f"worker {node} serving {', '.join(dict.fromkeys(wanted))}")
    celery_app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(dict.fromkeys(wanted)),
            "--concurrency",
            "1",
            "--pool",
            "prefork",
            "--hostname",
            node,
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )


@clean_errors
def api(
    host: str = "127.0.0.1",
    port: int = 8000,
    public_reads: Annotated[
        bool, typer.Option("--public-reads", help="serve GET requests without a token (writes still need one)")
    ] = False,
    insecure_dev: Annotated[
        bool,
        typer.Option("--insecure-dev", help="start without a token of 32+ characters: for a trial on localhost only"),
    ] = False,
) -> None:
    """Serve the REST API (FastAPI). Writes need $COTUNE_API_TOKEN, reads it or $COTUNE_API_READ_TOKEN
    (unless --public-reads); it refuses to start without a token of at least 32 characters."""
    import uvicorn
    from cotune.tuner.service.api import create_app
    from cotune.tuner.spec.redact import install_log_redaction
    from cotune.tuner.spec.settings import ServiceSettings

    settings = ServiceSettings.from_env(public_reads=public_reads)
    install_log_redaction(settings.redactor())  # uvicorn's access and error logs included
    app = create_app(settings, insecure_dev=insecure_dev)
    if insecure_dev and settings.token_problems():
        err.print(f"warning: --insecure-dev: {'; '.join(settings.token_problems())}", highlight=False)
    uvicorn.run(app, host=host, port=port)
