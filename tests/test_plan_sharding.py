"""`plan --tp N --ep N`: per-rank shapes as vLLM shards them, checked against transformers' weights split by
vLLM's rules (tests/hf_models.py) and against numbers worked out by hand for real models; sizes the ranks do
not divide are refused with one line naming the config key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cotune.tuner.codesign.forward import layer_problems
from cotune.tuner.codesign.model_config import load_model_config, parse_model_config
from cotune.tuner.codesign.plan import write_plan
from cotune.tuner.codesign.sharding import Parallelism
from cotune.tuner.errors import SpecError

from tests.cli import cotune
from tests.hf_models import MODELS, REAL_SHARDINGS, SHARDINGS, planned, truth

SHARDED = [(case, tp, ep) for case, pairs in {**SHARDINGS, **REAL_SHARDINGS}.items() for tp, ep in pairs]


@pytest.mark.parametrize(("case", "tp", "ep"), SHARDED)
def test_per_rank_problems_are_the_weights_vllm_gives_one_rank(tmp_path: Path, case: str, tp: int, ep: int):
    hf = truth()[case]
    config = tmp_path / "config.json"
    config.write_text(json.dumps(hf["config"]))
    write_plan(config, tmp_path / "plan", [4], ["bf16"], [], 5, 64, parallel=Parallelism(tp=tp, ep=ep))
    manifest = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert planned(manifest, 4) == hf["weights"][f"{tp},{ep}"]
    assert manifest["parallel"] == {"tp": tp, "ep": ep}


def experts(config: str, **parallel: int) -> dict[str, int]:
    model = load_model_config(MODELS / config)
    problems = layer_problems(model, [1], 2048, parallel=Parallelism(**parallel))
    (shape,) = [dict(p.shape) for p in problems if p.name == "moe_experts"]
    return shape


def test_fused_moe_shapes_of_real_models_per_rank():
    # vLLM names these files E=8,N=7168 / E=128,N=192 / E=32,N=2048 (N: intermediate size per rank)
    assert experts("mixtral-8x7b.json", tp=2) == {"M": 1, "E": 8, "H": 4096, "I": 7168, "topk": 2}
    assert experts("qwen3-30b-a3b.json", tp=4) == {"M": 1, "E": 128, "H": 2048, "I": 192, "topk": 8}
    assert experts("deepseek-v3.json", tp=8, ep=8) == {"M": 1, "E": 32, "H": 7168, "I": 2048, "topk": 8}
    assert experts("llama-4-scout-17b-16e.json", tp=8) == {"M": 1, "E": 16, "H": 5120, "I": 1024, "topk": 1}


def test_attention_and_lm_head_per_rank_of_llama_3_70b():
    model = load_model_config(MODELS / "llama-3-70b.json")
    problems = {p.name: dict(p.shape) for p in layer_problems(model, [1], 2048, parallel=Parallelism(tp=16))}
    # 64 heads / 16 = 4 per rank; 8 KV heads < 16 ranks: one KV head per rank, each replicated twice
    assert problems["qkv_proj"] == {"M": 1, "N": (4 + 2 * 1) * 128, "K": 8192}
    assert problems["attention_decode"]["heads"] == 4
    assert problems["o_proj"] == {"M": 1, "N": 8192, "K": 4 * 128}
    assert problems["gate_up_proj"] == {"M": 1, "N": 2 * 28672 // 16, "K": 8192}
    assert problems["lm_head"] == {"M": 1, "N": 128256 // 16, "K": 8192}  # 128256 is a multiple of 64


LLAMA = json.loads((MODELS / "llama-3-8b.json").read_text())
QWEN3 = json.loads((MODELS / "qwen3-30b-a3b.json").read_text())
DSV3 = json.loads((MODELS / "deepseek-v3.json").read_text())
SCOUT = json.loads((MODELS / "llama-4-scout-17b-16e.json").read_text())


@pytest.mark.parametrize(
    ("data", "parallel", "expected"),
    [
        (LLAMA, {"tp": 3}, r"^plan: --tp 3 does not divide num_attention_heads 32$"),
        (
            {**LLAMA, "num_attention_heads": 48, "hidden_size": 6144},
            {"tp": 12},
            r"--tp 12 is more than num_key_value_heads 8 and not a multiple of it",
        ),
        ({**LLAMA, "intermediate_size": 14000}, {"tp": 32}, r"--tp 32 does not divide intermediate_size 14000$"),
        ({**QWEN3, "moe_intermediate_size": 1000}, {"tp": 16}, r"--tp 16 does not divide moe_intermediate_size 1000"),
        (
            {**DSV3, "n_shared_experts": 3, "moe_intermediate_size": 2000},
            {"tp": 32, "ep": 8},
            r"--tp 32 does not divide n_shared_experts x moe_intermediate_size 6000$",
        ),
        (QWEN3, {"ep": 3}, r"^plan: --ep 3 does not divide num_experts 128$"),
        (LLAMA, {"ep": 2}, r"^plan: --ep 2: this model has no experts to place$"),
        (SCOUT, {"tp": 3}, r"--tp 3 does not divide text_config.num_attention_heads 40$"),
        (
            {
                **LLAMA,
                "num_attention_heads": 24,
                "num_key_value_heads": 24,
                "hidden_size": 3072,
                "vocab_size": 31990,
                "intermediate_size": 12288,
            },
            {"tp": 3},
            r"--tp 3 does not divide vocab_size 31990 padded to a multiple of 64 \(32000\)$",
        ),
    ],
)
def test_sizes_the_ranks_do_not_divide_are_refused_naming_the_key(data: dict, parallel: dict, expected: str):
    model = parse_model_config(data, "cfg.json")
    with pytest.raises(SpecError, match=expected):
        layer_problems(model, [1], 1024, parallel=Parallelism(**parallel))


@pytest.mark.parametrize("bad", [0, -1, 1025, True])
def test_rank_counts_are_bounded(bad: int):
    with pytest.raises(SpecError, match=r"--tp must be an integer from 1 to 1024"):
        Parallelism(tp=bad)


def test_cli_plans_a_sharded_moe_model_and_names_what_it_leaves_out(tmp_path: Path):
    proc = cotune("plan", str(MODELS / "deepseek-v3.json"), "--tp", "8", "--ep", "8", "-o", "plan", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "deepseek_v3: 61 layers (3 dense, 58 MoE); per rank of tp 8, ep 8" in proc.stdout
    assert "fused_moe M: 1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096" in proc.stdout
    assert "not modelled: MLA attention core" in proc.stdout and "weight_block_size=[128, 128]" in proc.stdout
    manifest = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert manifest["problems"]["moe_experts"]["per_batch"][0]["shape"] == {
        "M": 1,
        "E": 32,
        "H": 7168,
        "I": 2048,
        "topk": 8,
    }
    assert manifest["problems"]["moe_experts"]["layers"] == 58 and manifest["problems"]["gate_up_proj"]["layers"] == 3

    proc = cotune("plan", str(MODELS / "mixtral-8x7b.json"), "--tp", "3", "-o", "bad", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == "error: plan: --tp 3 does not divide num_attention_heads 32"
    assert not (tmp_path / "bad").exists()

    proc = cotune("plan", str(MODELS / "mixtral-8x7b.json"), "--batch", "8", "-o", "given", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "given" / "plan.json").read_text())
    assert manifest["batches"] == [8] and manifest["moe_batches"] == [8]
