"""A service job repeats with its seed: each trial ticket's sampler is seeded from the job's seed and the
ticket's place in its study, never from the process or the time (docs/service.md, "Reproducibility")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
from cotune.tuner.search.samplers import ticket_seed
from cotune.tuner.store.studies import open_storage

from tests.service.conftest import noop_spec

WAIT = 180


def test_a_ticket_seed_depends_on_the_job_seed_and_the_ticket_only():
    seeds = [ticket_seed(7, i) for i in range(100)]
    assert len(set(seeds)) == 100  # no two tickets of a study share a stream
    code = "from cotune.tuner.search.samplers import ticket_seed as s; print([s(7, i) for i in range(100)])"
    elsewhere = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(elsewhere.stdout) == seeds  # another process, another moment: the same seeds
    assert ticket_seed(8, 0) != seeds[0]
    assert ticket_seed(None, 3) is None  # no seed in the spec: fresh entropy for every ticket


def run_job(service, tmp_path: Path, name: str, seed: int) -> list[dict]:
    """One job of 8 trials on a single worker; the configs its study asked, in trial order."""
    text = noop_spec(name, trials=8, sleep_ms=3) + f"sampler: {{name: cotune, seed: {seed}, transfer: false}}\n"
    (tmp_path / f"{name}.yaml").write_text(text)
    done = service.cli("submit", str(tmp_path / f"{name}.yaml"))
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().splitlines()[-1]
    waited = service.cli("wait", job, "--timeout", str(WAIT), "--interval", "0.5", timeout=WAIT + 30)
    assert waited.returncode == 0, f"{waited.stdout}{waited.stderr}\n{service.diagnosis(job)}"
    (study,) = json.loads(service.cli("status", job, "--json").stdout)["studies"]
    storage = open_storage(service.env["COTUNE_STORAGE"])
    trials = optuna.load_study(study_name=study["name"], storage=storage).get_trials(deepcopy=False)
    return [t.params for t in sorted(trials, key=lambda t: t.number)]


def test_a_service_job_repeats_its_configs_with_its_seed(service, tmp_path):
    """One worker runs a job; another worker process, started later, runs the same job with the same seed and
    asks the same configs in the same order; another seed asks others. (The cotune sampler's first 10 picks
    are random among the configs not yet measured, so with one worker they do not depend on the timings.)"""
    first_worker = service.start_worker("first")
    first = run_job(service, tmp_path, "seeded-a", seed=5)
    service.kill_worker(first_worker)
    service.start_worker("second")
    again = run_job(service, tmp_path, "seeded-b", seed=5)
    other = run_job(service, tmp_path, "seeded-c", seed=6)
    assert len(first) >= 8
    assert again == first
    assert other != first
