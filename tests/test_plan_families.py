"""Plans for every MoE family on the hub, checked against transformers' own models.

Each case is a config.json built with the family's transformers config class (small sizes, chosen so the
layouts differ: interleaved dense layers, shared experts, head_dim != hidden / heads, low-rank q or not),
planned through ``write_plan`` as ``cotune plan`` does; every problem in plan.json is compared with the
weights of the model transformers builds from the same config on the meta device (tests/hf_models.py): the
same operations, the same shapes, and for each operation the number of layers that hold its weight. The
real-size configs in models/ are checked the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cotune.tuner.codesign.plan import write_plan

from tests.hf_models import MODELS, REAL, planned, truth

FAMILY_CASES = [
    "mixtral", "qwen2_moe", "qwen3_moe", "qwen3_moe_num_experts", "deepseek_v2_lite", "deepseek_v3",
    "llama4_text", "llama4", "olmoe", "granitemoeshared", "gpt_oss", "llama",
]  # fmt: skip


def plan_json(tmp_path: Path, data: dict, **kwargs) -> dict:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(data, indent=2))
    write_plan(config, tmp_path / "plan", [4], ["bf16"], [], 5, 64, **kwargs)
    return json.loads((tmp_path / "plan" / "plan.json").read_text())


@pytest.mark.parametrize("case", FAMILY_CASES)
def test_planned_problems_are_the_models_weights(tmp_path: Path, case: str):
    hf = truth()[case]
    manifest = plan_json(tmp_path, hf["config"])
    assert planned(manifest, 4) == hf["weights"]["1,1"]
    assert manifest["layers"] == hf["layers"]
    assert manifest["parallel"] == {"tp": 1, "ep": 1}


def test_the_cases_cover_every_layout():
    """The cases above mean something only if their models differ where plans can go wrong."""
    hf = truth()
    assert hf["qwen2_moe"]["layers"] == {"all": 4, "dense": 3, "moe": 1}  # step 2 plus mlp_only_layers [3]
    assert hf["deepseek_v3"]["layers"] == {"all": 4, "dense": 1, "moe": 3}  # first_k_dense_replace 1
    assert hf["llama4"]["layers"] == {"all": 4, "dense": 2, "moe": 2}  # interleave_moe_layer_step 2
    assert "q_proj" in hf["deepseek_v2_lite"]["weights"]["1,1"] and "q_b_proj" in hf["deepseek_v3"]["weights"]["1,1"]
    shared = [c for c in FAMILY_CASES if "shared_expert_gate_up_proj" in hf[c]["weights"]["1,1"]]
    assert shared == ["qwen2_moe", "deepseek_v2_lite", "deepseek_v3", "llama4_text", "llama4", "granitemoeshared"]
    assert hf["qwen3_moe"]["weights"]["1,1"]["attention"][0] == {"heads": 4, "head_dim": 24}  # 4 x 24 != 64
    assert "num_experts" in hf["qwen3_moe_num_experts"]["config"] and "text_config" in hf["llama4"]["config"]


@pytest.mark.parametrize("case", ["qwen2_moe", "deepseek_v3", "llama4", "gpt_oss"])
def test_what_the_plan_leaves_out_is_named(tmp_path: Path, case: str):
    left_out = " | ".join(plan_json(tmp_path, truth()[case]["config"])["not_modelled"])
    expected = {
        "qwen2_moe": ["shared_expert_gate", "qkv_bias"],
        "deepseek_v3": ["MLA attention core", "e_score_correction_bias", "n_group=2"],
        "llama4": ["use_qk_norm", "attention_chunk_size=8192", "apply_router_weight_on_input", "vision_config"],
        "gpt_oss": ["expert biases", "router bias", "attention sinks", "swiglu_limit=7.0", "sliding_window=128"],
    }[case]
    assert all(name in left_out for name in expected), left_out


EXPECTED_LAYERS = {  # (layers, dense, MoE) of the real models, from their model cards and configs
    "mixtral-8x7b.json": (32, 0, 32),
    "llama-3-8b.json": (32, 32, 0),
    "deepseek-v3.json": (61, 3, 58),
    "qwen3-30b-a3b.json": (48, 0, 48),
    "llama-4-scout-17b-16e.json": (48, 0, 48),
    "llama-4-maverick-17b-128e.json": (48, 24, 24),
}


@pytest.mark.parametrize("config", REAL)
def test_real_size_configs_in_models_match_transformers(tmp_path: Path, config: str):
    hf = truth()[config]
    manifest = plan_json(tmp_path, json.loads((MODELS / config).read_text()))
    assert planned(manifest, 4) == hf["weights"]["1,1"]
    total, dense, moe = EXPECTED_LAYERS[config]
    assert manifest["layers"] == hf["layers"] == {"all": total, "dense": dense, "moe": moe}
