"""bench/search_efficiency.py on a folder of the user's own recordings: runs cotune by default, writes
beside the shared data's results instead of over them, and a stopped run resumes without redoing the runs
it finished."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests/data/vector_add_time_energy_RTX_4000_Ada.json"


def bench(data: Path, *extra: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "bench/search_efficiency.py"), "--data", str(data), "--budget", "12"]
    proc = subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_another_folder_runs_cotune_and_never_overwrites_the_shared_results(tmp_path: Path) -> None:
    data = tmp_path / "mine"
    data.mkdir()
    shutil.copy(FIXTURE, data / "vector_add.json")
    first = bench(data, "--seeds", "2", cwd=tmp_path)
    out = tmp_path / "bench/results/search_efficiency_mine.json"
    result = json.loads(out.read_text())
    assert {r["strategy"] for r in result["runs"]} == {"cotune", "tpe", "random"}
    assert not (tmp_path / "bench/results/search_efficiency.json").exists()
    assert "[6/6] vector_add.json" in first.stderr and not out.with_name(out.name + ".runs.jsonl").exists()


def test_a_stopped_run_resumes_from_its_journal(tmp_path: Path) -> None:
    """Each finished run is journalled as it completes. Run again, the journalled runs are taken from the
    journal, not run again (marked here so that a rerun would show), and a line cut off mid-write when the
    run was stopped is run again."""
    sys.path.insert(0, str(REPO / "bench"))
    from search_efficiency import run_jobs

    jobs = [(str(FIXTURE), s, seed, 12) for s in ("cotune", "tpe", "random") for seed in range(2)]
    journal = tmp_path / "out.json.runs.jsonl"
    rows = run_jobs(jobs, 1, journal)
    assert [(r["strategy"], r["seed"]) for r in rows] == [(s, seed) for _, s, seed, _ in jobs]
    assert len(journal.read_text().splitlines()) == 6
    kept = [r | {"to_2pct": -1} for r in rows if r["seed"] == 0]
    journal.write_text("".join(json.dumps(r) + "\n" for r in kept[:2]) + json.dumps(kept[2])[:40])
    again = run_jobs(jobs, 1, journal)
    reused = {(r["strategy"], r["seed"]) for r in again if r["to_2pct"] == -1}
    assert reused == {(r["strategy"], 0) for r in kept[:2]}
    assert [r["curve"] for r in again] == [r["curve"] for r in rows]  # each seed repeats its run
    assert len(journal.read_text().splitlines()) == 7  # 2 kept, the cut line, and the 4 runs done again


def test_a_run_that_fails_costs_none_of_the_others(tmp_path: Path) -> None:
    """A strategy that raises on a file is named with its error at the end; every other run is finished
    and journalled, so a rerun does only the failed ones."""
    sys.path.insert(0, str(REPO / "bench"))
    from search_efficiency import run_jobs

    jobs = [(str(FIXTURE), s, seed, 12) for s in ("cotune[no_such_setting=1]", "tpe") for seed in range(2)]
    journal = tmp_path / "out.json.runs.jsonl"
    with pytest.raises(SystemExit, match="2 of 4 runs failed") as stop:
        run_jobs(jobs, 1, journal)
    assert "no_such_setting" in str(stop.value) and "seed 1" in str(stop.value)
    assert sorted(json.loads(line)["seed"] for line in journal.read_text().splitlines()) == [0, 1]


def test_a_folder_of_kernel_tuner_output_benchmarks_each_recording_once(tmp_path: Path, capsys) -> None:
    """Kernel Tuner writes a run's T4 results as NAME-results.json and its machine as NAME-metadata.json.
    The results file beside the run's cache is a copy of it, the metadata file is no recording: both are
    left out, the metadata file with its reason, and a T4 file with no cache beside it is benchmarked."""
    file_utils = pytest.importorskip("kernel_tuner.file_utils")
    sys.path.insert(0, str(REPO / "bench"))
    from search_efficiency import recordings

    cache = json.loads(FIXTURE.read_text())
    t4 = file_utils.get_t4_results(list(cache["cache"].values()), cache["tune_params"])
    shutil.copy(FIXTURE, tmp_path / "vector_add.json")
    for name in ("vector_add-results.json", "other_gpu-results.json"):
        (tmp_path / name).write_text(json.dumps(t4))
    metadata = {"metadata": {"operating_system": "Linux", "hardware": {}}, "schema_version": "1.0.0"}
    (tmp_path / "vector_add-metadata.json").write_text(json.dumps(metadata))
    assert recordings(tmp_path) == ["other_gpu-results.json", "vector_add.json"]
    err = capsys.readouterr().err
    assert "left out vector_add-metadata.json" in err and "T4 metadata file" in err
