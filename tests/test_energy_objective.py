"""Energy as an objective: spec rules, the Pareto front, and the export policies that pick from it.

Energy readings need NVML on a GPU; on the CPU the front and the policies are checked on a real Optuna
multi-objective study and on re-measured values, and the whole loop runs in the GPU-marked test.
"""

from __future__ import annotations

import optuna
import pytest
import torch
from cotune.tuner.codesign.pareto import Policy, front, select
from cotune.tuner.driver import _front_trials
from cotune.tuner.errors import SpecError
from cotune.tuner.measure.objective import directions, score
from cotune.tuner.spec.job import parse_spec
from cotune.tuner.track.tracker import BestLog
from cotune.tuner.types import Config, Measurement, Objective

BASE = """
name: energy
kernel: {kernel}
problems: [{{M: 128, N: 1024, K: 1024}}]
precisions: [{precision}]
objective: {objective}
budget: {{trials: 10}}
"""


def _best(n: int, time_s: float, energy_j: float) -> BestLog:
    m = Measurement((time_s,), energy_j=energy_j)
    return BestLog(n, Config.make({"BLOCK_M": 16 * (n + 1)}), m, m)


CANDIDATES = [
    _best(0, 1.00e-3, 0.50),  # fastest
    _best(1, 1.05e-3, 0.40),
    _best(2, 1.30e-3, 0.37),  # most efficient
    _best(3, 1.40e-3, 0.45),  # dominated by 2
]


def test_front_drops_dominated_configs() -> None:
    assert [b.trial_number for b in front(CANDIDATES)] == [0, 1, 2]


@pytest.mark.parametrize(
    ("policy", "slack", "expected"),
    [
        (Policy.FASTEST, 0.0, 0),
        (Policy.MOST_EFFICIENT, 0.0, 2),
        (Policy.FASTEST_WITHIN_ENERGY, 0.10, 1),  # 0.40 <= 1.1 x 0.37; 0.50 is not
        (Policy.FASTEST_WITHIN_ENERGY, 0.40, 0),
    ],
)
def test_policies_pick_from_the_front(policy: Policy, slack: float, expected: int) -> None:
    assert select(CANDIDATES, policy, slack).trial_number == expected


def test_optuna_front_feeds_the_remeasure() -> None:
    study = optuna.create_study(directions=directions(Objective.TIME_AND_ENERGY))
    dist = {"BLOCK_M": optuna.distributions.CategoricalDistribution([16, 32, 48, 64])}
    for b in CANDIDATES:
        values = score(b.tuned, Objective.TIME_AND_ENERGY)
        study.add_trial(optuna.trial.create_trial(params=b.config.values, distributions=dist, values=values))
    assert [t.params["BLOCK_M"] for t in _front_trials(study)] == [16, 32, 48]


def test_energy_objectives_need_a_gpu_kernel_and_one_objective_for_patience() -> None:
    with pytest.raises(SpecError, match="needs energy readings .*c_matmul runs on cpu"):
        parse_spec(BASE.format(kernel="c_matmul", precision="fp32", objective="min_energy"))
    spec = BASE.format(kernel="triton_matmul", precision="bf16", objective="time_and_energy")
    assert parse_spec(spec + "selection: {policy: fastest_within_energy, energy_slack: 0.05}\n").selection.policy
    with pytest.raises(SpecError, match="patience"):
        parse_spec(spec.replace("{trials: 10}", "{trials: 10, patience: 5}"))
    with pytest.raises(SpecError, match="selection: a policy picks from a Pareto front"):
        parse_spec(
            BASE.format(kernel="triton_matmul", precision="bf16", objective="min_time")
            + "selection: {policy: most_efficient}\n"
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_time_and_energy_job_on_a_gpu(tmp_path) -> None:
    from cotune.tuner.device.profiles import detect
    from cotune.tuner.driver import tune_job
    from cotune.tuner.track.tracker import NullTracker

    spec = parse_spec(
        BASE.format(kernel="triton_matmul", precision="bf16", objective="time_and_energy").replace("10}", "6}")
        + "selection: {policy: fastest_within_energy, energy_slack: 0.1}\ntop_k: 2\n"
    )
    [outcome] = tune_job(spec, f"sqlite:///{tmp_path}/o.db", detect("cuda"), NullTracker())
    assert outcome.best is not None and outcome.best.remeasured.energy_j > 0
