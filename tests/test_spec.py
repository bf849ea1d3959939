from __future__ import annotations

import pytest
from cotune.tuner.errors import SpecError
from cotune.tuner.spec.job import parse_spec
from cotune.tuner.spec.settings import Settings

GOOD = """
name: t
kernel: c_matmul
problems:
  - {M: [1, 16, 64], N: 256, K: [128, 256]}
budget: {trials: 5}
"""


def test_lists_expand_to_cross_product():
    spec = parse_spec(GOOD)
    problems = spec.expand()
    assert len(problems) == 6
    assert problems[0].key == "c_matmul:K=128,M=1,N=256:fp32"
    assert spec.top_k == 3 and spec.sampler.name == "cotune"


def test_precisions_multiply_problems():
    spec = parse_spec(GOOD.replace("c_matmul", "torch_linear") + "precisions: [fp32, bf16]\n")
    assert len(spec.expand()) == 12


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("c_matmul", "no_such_kernel"), r"<spec>:3: kernel: .*unknown kernel 'no_such_kernel'"),
        (GOOD + "budgett: {trials: 1}\n", r"<spec>:7: budgett: unknown key"),
        (GOOD.replace("{trials: 5}", "{trials: -1}"), r"<spec>:6: budget.trials: .*greater than 0"),
        (GOOD.replace("{trials: 5}", "{}"), r"budget: .*give trials, wall_time_s, or both"),
        (GOOD.replace("M: [1, 16, 64]", "Q: 3"), r"takes dims M, N, K; missing M; unknown Q"),
        (GOOD + "precisions: [bf16]\n", r"c_matmul supports fp32, not bf16"),
        (GOOD.replace("N: 256", "N: 0"), r"<spec>:4: problems: .*problems.0.N must be a positive integer"),
        ("name: [unclosed\n", r"<spec>:\d+: not valid YAML"),
        ("- just a list\n", r"a job spec is a YAML mapping"),
    ],
)
def test_bad_specs_name_line_and_field(text, expected):
    with pytest.raises(SpecError, match=expected):
        parse_spec(text)


def test_settings_precedence(tmp_path):
    env = {"COTUNE_STORAGE": "sqlite:///env.db", "MLFLOW_TRACKING_URI": "sqlite:///envml.db"}
    s = Settings.resolve(storage="sqlite:///cli.db", env=env, spec_storage="sqlite:///spec.db")
    assert s.storage == "sqlite:///cli.db" and s.mlflow_tracking_uri == "sqlite:///envml.db"
    s = Settings.resolve(env={}, spec_storage="sqlite:///spec.db")
    assert s.storage == "sqlite:///spec.db"
    assert Settings.resolve(env={}).storage == "sqlite:///cotune-runs/optuna.db"
