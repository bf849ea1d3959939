"""Precision as a tuned dimension: the fastest precision within the job's accuracy bound is chosen."""

from __future__ import annotations

import json

from cotune.tuner.codesign.precision_choice import choose
from cotune.tuner.types import Measurement, Problem

from tests.cli import tune_and_export

SPEC = """
name: precisions
kernel: torch_linear
problems:
  - {{M: 32, N: 256, K: 512}}
precisions: [fp32, bf16]
accuracy_bound: {bound}
budget: {{trials: 3}}
sampler: {{name: random, seed: 0}}
top_k: 1
bench: {{warmup: 1, repeats: 3, remeasure_repeats: 3}}
"""


def _m(time_s: float, err: float, fp32_err: float | None = None) -> Measurement:
    return Measurement((time_s,), max_rel_error=err, fp32_error=fp32_err)


def test_fastest_within_bound_wins_and_every_precision_is_reported() -> None:
    shape = {"M": 16, "N": 8192, "K": 8192}
    winners = [
        (Problem.make("triton_matmul", shape, "fp8"), _m(1.0e-4, 0.01, fp32_err=0.06)),  # fastest, too coarse
        (Problem.make("triton_matmul", shape, "bf16"), _m(1.6e-4, 0.004)),
        (Problem.make("triton_matmul", shape, "fp32"), _m(9.0e-4, 1e-6)),
        (Problem.make("triton_matmul", {**shape, "M": 128}, "fp8"), _m(2.0e-4, 0.01, fp32_err=0.02)),
    ]
    by_shape = {c.shape["M"]: c for c in choose(winners, bound=0.03)}
    small = by_shape[16]
    assert small.chosen == "bf16"  # fp8's error against fp32 (0.06), not its own check (0.01), is bounded
    assert [o.precision for o in small.options] == ["fp8", "bf16", "fp32"]
    assert [o.within_bound for o in small.options] == [False, True, True]
    assert by_shape[128].chosen == "fp8"
    assert choose(winners[:1], bound=0.01)[0].chosen is None


def test_a_job_with_a_bound_exports_its_precision_choice(tmp_path) -> None:
    # bf16 inputs carry ~4e-3 relative rounding, fp32 ~1e-7: a 1e-4 bound admits only fp32
    proc = tune_and_export(tmp_path, SPEC.format(bound="1.0e-4"))
    assert "precision for torch_linear:K=512,M=32,N=256 (error <= 0.0001): fp32" in proc.stdout
    [choice] = json.loads((tmp_path / "best.json").read_text())["precision_choice"]
    assert choice["chosen"] == "fp32" and choice["accuracy_bound"] == 1e-4
    errors = {o["precision"]: o["error"] for o in choice["options"]}
    assert errors["fp32"] < 1e-4 < errors["bf16"] < 3e-2


def test_a_throughput_job_ranks_precisions_by_throughput() -> None:
    from cotune.tuner.types import Objective

    shape = {"M": 16, "N": 64, "K": 64}
    # a serving kernel: bf16 has the lower median latency but serves fewer flop/s (fewer requests batched)
    fast_latency = Measurement((0.01,), flops=1e6, max_rel_error=0.004)
    high_rate = Measurement((0.02,), flops=4e6, max_rel_error=1e-6)
    winners = [
        (Problem.make("torch_linear", shape, "bf16"), fast_latency),
        (Problem.make("torch_linear", shape, "fp32"), high_rate),
    ]
    [by_time] = choose(winners, bound=0.01)
    [by_rate] = choose(winners, bound=0.01, objective=Objective.MAX_THROUGHPUT)
    assert by_time.chosen == "bf16" and by_rate.chosen == "fp32"
