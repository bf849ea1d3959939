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


def test_an_unchanged_toolchain_has_nothing_to_retune(exported):
    # a generous threshold: the same config on the same machine, timed again on a busy 2-core box
    proc = cotune("revalidate", "best.json", "--threshold", "3", cwd=exported)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("│ ok") == 2
    assert "no regressions: nothing to re-tune" in proc.stdout


def test_a_regression_is_retuned_from_the_old_winner(exported):
    data = json.loads((exported / "best.json").read_text())
    _, fast = data["entries"]
    fast["metrics"]["time_s"] /= 100  # as if an older toolchain had run it 100x faster
    old_winner = fast["config"]
    (exported / "stale.json").write_text(json.dumps(data))
    # the threshold is wide because two runs of a 60 us kernel on a busy 2-core machine differ by tens of %
    proc = cotune("revalidate", "stale.json", "--threshold", "3", "--trials", "3", "-o", "new.json", cwd=exported)
    assert proc.returncode == 0, proc.stderr
    assert "regressed" in proc.stdout and "re-tuning 1 c_matmul fp32 problem(s)" in proc.stdout
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
