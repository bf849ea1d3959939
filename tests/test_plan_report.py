"""A plan.json of an MoE model with dense and MoE layers, added back up by the co-design report: each operation
counts only the layers that run it, the LM head once, and the fused-MoE entries that only fill the servers'
batch list (no planned batch) are not mistaken for a batch."""

from __future__ import annotations

import json

import pytest
from cotune.tuner.codesign.model_config import parse_model_config
from cotune.tuner.codesign.plan import plan_specs
from cotune.tuner.codesign.report import Result, estimate_layers
from cotune.tuner.types import Problem

QWEN2_MOE = {  # 4 layers, MoE in layers 1 and 3 (decoder_sparse_step 2): 2 dense, 2 MoE
    "model_type": "qwen2_moe", "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 1024, "num_experts": 8,
    "num_experts_per_tok": 2, "moe_intermediate_size": 128, "shared_expert_intermediate_size": 384,
    "decoder_sparse_step": 2,
}  # fmt: skip


def test_report_counts_each_operation_in_the_layers_that_run_it():
    plan = json.loads(plan_specs(parse_model_config(QWEN2_MOE, "q.json"), "q", None, ["bf16"])["plan.json"])
    assert plan["layers"] == {"all": 4, "dense": 2, "moe": 2} and plan["batches"] == [1, 16, 64]

    problems = {
        (name, step["batch"]): Problem.make(p["kernel"], step["shape"], "bf16")
        for name, p in plan["problems"].items()
        for step in p["per_batch"]
    }
    keys = sorted({problem.key for problem in problems.values()})
    times = {k: (i + 1) * 1e-6 for i, k in enumerate(keys)}  # a distinct time per distinct problem

    def time(name: str, batch: int) -> float:
        return times[problems[name, batch].key]

    results = list({p.key: Result(p, "h100", times[p.key], 0.0, "job") for p in problems.values()}.values())
    estimates = {e.batch: e for e in estimate_layers(results, plan)}
    assert sorted(estimates) == [1, 16, 64]
    for batch, est in estimates.items():
        layers = sum(time(n, batch) * p["layers"] for n, p in plan["problems"].items() if n != "lm_head")
        head = time("lm_head", batch)
        assert est.missing == [] and est.tokens == batch
        assert est.lm_head_s == pytest.approx(head)
        assert est.step_s - est.lm_head_s == pytest.approx(layers)  # each op times the layers that run it
        assert est.tokens_per_s == pytest.approx(batch / (layers + head))
    # without the fused-MoE results the estimate names what it lacks
    partial = estimate_layers([r for r in results if r.problem.kernel != "fused_moe"], plan)
    assert all(e.missing == ["moe_experts"] for e in partial)
