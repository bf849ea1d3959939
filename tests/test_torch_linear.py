from __future__ import annotations

import pytest
from cotune.kernels.torch_linear import TOLERANCE, TorchLinear
from cotune.tuner.measure.kernel import BenchSettings
from cotune.tuner.types import Config, Precision, Problem


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_measures_and_verifies_against_fp32_reference(cpu, dtype):
    kernel = TorchLinear()
    problem = Problem.make("torch_linear", {"M": 8, "N": 64, "K": 128}, dtype)
    config = Config.make({"threads": 1, "weight_layout": "kn", "batch_splits": 2})
    m = kernel.measure(problem, config, cpu, BenchSettings(warmup=1, repeats=3))
    assert len(m.times_s) == 3 and m.gflops > 0
    assert m.max_rel_error <= TOLERANCE[Precision(dtype)]
    if dtype == "bf16":  # the check is against fp32, so bf16 rounding shows, within its own tolerance
        assert m.max_rel_error > TOLERANCE[Precision.FP32]


def test_thread_constraint_uses_the_device(cpu):
    space = TorchLinear().space()
    problem = Problem.make("torch_linear", {"M": 8, "N": 64, "K": 128}, "fp32")
    too_many = Config.make({"threads": cpu.cores * 4, "weight_layout": "nk", "batch_splits": 1})
    assert "threads within cores violated" in (space.violation(too_many, problem, cpu) or "")
