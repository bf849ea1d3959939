"""The service CLI in an 80-column terminal: nothing a user copies or compares is cut. A job id stays
whole in ``jobs``, ``status`` and ``watch``; a long name folds onto more lines; an error is printed as text."""

from __future__ import annotations

from cotune.tuner.store.jobs import JobStore

from tests.service.conftest import noop_spec, submit

NARROW = {"COLUMNS": "80"}  # what a pipe or a CI log gets from Rich, set so that a wide terminal changes nothing
NAME = "a-job-name-long-enough-that-no-80-column-table-has-room-for-it-on-one-line"
ERROR = "noop needs Triton here: pip install 'cotune[gpu]' (or triton) [and then resubmit]"


def folded_column(lines: list[str], header: str, next_header: str, first: int) -> str:
    """The text of one cell of a SIMPLE_HEAD table: its column's slice of the row's lines, joined."""
    head = next(line for line in lines if header in line and next_header in line)
    start, end = head.index(header), head.index(next_header)
    cell = []
    for line in lines[first:]:
        if cell and line[: head.index(header)].strip():  # the next row starts
            break
        cell.append(line[start:end].strip())
    return "".join(cell)


def test_ids_names_and_errors_survive_80_columns(service, tmp_path):
    job = submit(service, tmp_path, noop_spec(NAME, trials=1, sleep_ms=1))  # no worker: it stays queued
    # the error a worker records when a ticket fails for good (release_after_error), here without the wait
    JobStore(service.env["COTUNE_STORAGE"]).fail_job(job, ERROR)

    listed = service.cli("jobs", env=NARROW)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, listed.stdout
    row = next(i for i, line in enumerate(lines) if job in line)  # the whole id, on one line
    assert folded_column(lines, "name", "state", row) == NAME, listed.stdout
    assert "…" not in listed.stdout

    shown = service.cli("status", job, env=NARROW)
    assert shown.returncode == 0, shown.stderr
    assert f"{job} ({NAME}): failed on cpu" in shown.stdout
    assert f"error: {ERROR}" in shown.stdout, shown.stdout

    watched = service.cli("watch", job, "--interval", "0.2", env=NARROW)
    assert watched.returncode == 1  # the job failed
    assert f"{job} " in watched.stdout and "/1 failed" in watched.stdout and "…" not in watched.stdout, watched.stdout
    assert f"error: {ERROR}" in watched.stdout, watched.stdout

    waited = service.cli("wait", job, env=NARROW)
    assert waited.returncode == 1 and f"error: {ERROR}" in waited.stdout, waited.stdout
