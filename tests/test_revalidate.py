"""`cotune revalidate`: re-measure an export on this machine, flag regressions, re-tune only those problems
with the old winner measured first."""

from __future__ import annotations

import json

import optuna
import pytest

from tests.cli import cotune, tune_and_export

SPEC = """
name: rv
kernel: c_matmul
problems:
  - {M: [16, 32], N: 64, K: 64}
budget: {trials: 4}
sampler: {name: random, seed: 0}
top_k: 1
bench: {warmup: 1, repeats: 3, remeasure_repeats: 5}
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    work = tmp_path_factory.mktemp("rv")
    tune_and_export(work, SPEC)
    return work


def _export_with(exported, name: str, time_factor: float, spread: float | None = None) -> dict:
    """best.json with each exported time scaled (and its spread set), written as ``name``."""
    data = json.loads((exported / "best.json").read_text())
    for e in data["entries"]:
        e["metrics"]["time_s"] *= time_factor
        if spread is not None:
            e["metrics"]["spread"] = spread
    (exported / name).write_text(json.dumps(data))
    return data


def test_a_config_no_slower_than_exported_is_not_retuned(exported):
    """Exported times 10x the real ones (an older, slower toolchain): nothing regressed, whatever the load."""
    _export_with(exported, "slower.json", 10.0)
    proc = cotune("revalidate", "slower.json", cwd=exported)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("│ ok") == 2 and "no regressions: nothing to re-tune" in proc.stdout
    assert "beyond the noise" in proc.stdout  # the legend says what the statuses mean


def test_a_slowdown_within_the_timings_noise_is_not_a_regression(exported):
    """3x slower than exported, but the export's own timing spread was 1000 %: noise, not re-tuned."""
    _export_with(exported, "noisy.json", 1 / 3, spread=10.0)
    proc = cotune("revalidate", "noisy.json", cwd=exported)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("│ noise") == 2 and "no regressions: nothing to re-tune" in proc.stdout


def test_a_regression_is_retuned_from_the_old_winner(exported):
    # the other entry 10x slower than real, so that no load makes it a regression (seen at 1x on a loaded
    # machine: both were re-tuned)
    data = _export_with(exported, "stale.json", 10.0)
    _, fast = data["entries"]
    fast["metrics"]["time_s"] /= 1000  # as if an older toolchain had run it 100x faster
    old_winner = fast["config"]
    (exported / "stale.json").write_text(json.dumps(data))
    proc = cotune("revalidate", "stale.json", "--trials", "3", "-o", "new.json", cwd=exported)
    assert proc.returncode == 0, proc.stderr
    assert "regressed" in proc.stdout
    assert "re-tuning 1 c_matmul fp32 problem(s) as job rv-revalidated, old winners first" in proc.stdout
    key = f"c_matmul:{','.join(f'{k}={v}' for k, v in sorted(fast['shape'].items()))}:fp32"
    assert any(line.startswith(f"{key}: ") for line in proc.stdout.splitlines()[-3:]), proc.stdout
    new = json.loads((exported / "new.json").read_text())
    assert new["job"] == "rv-revalidated"
    assert [e["shape"] for e in new["entries"]] == [fast["shape"]]  # only the regressed problem
    storage = f"sqlite:///{exported}/cotune-runs/optuna.db"
    [study] = [s for s in optuna.get_all_study_summaries(storage) if s.user_attrs.get("job") == "rv-revalidated"]
    first = optuna.load_study(study_name=study.study_name, storage=storage).trials[0]
    assert first.params == old_winner  # the old winner was measured first (enqueue_trial)


def test_a_file_that_is_not_an_export_is_one_clear_line(tmp_path):
    (tmp_path / "x.json").write_text('{"foo": 1}')
    proc = cotune("revalidate", "x.json", cwd=tmp_path)
    assert proc.returncode == 1
    assert "x.json: not a cotune export" in proc.stderr and "Traceback" not in proc.stderr
