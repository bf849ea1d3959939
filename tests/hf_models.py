"""transformers' own models as the truth for the plan tests, computed in a subprocess.

The repository's ``kernels/`` folder shadows Hugging Face's ``kernels`` package (which transformers imports)
when tests run from the checkout, so everything that needs transformers runs here as a script, from another
directory, once per test session: it builds each case's config.json with the family's transformers config
class (small sizes), instantiates the model on the meta device (no memory), and reports the weights it holds,
sharded the way vLLM shards them. The per-rank rules are written here from vLLM's layers, apart from the plan
code: column-parallel outputs / tp, row-parallel inputs / tp, KV heads / tp or one per rank when tp exceeds
them, replicated routers and MLA down-projections, the LM head padded to a multiple of 64 then / tp, experts
E / ep whole or I / tp.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

MODELS = Path(__file__).resolve().parents[1] / "models"
SMALL = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 4, "vocab_size": 1000}
MLA = {"kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 12}
# (tp, ep) per case beyond (1, 1): KV heads split (mixtral) and replicated (gpt_oss: 2 KV heads, tp 4),
# shared experts and dense layers split (qwen2_moe, deepseek_v3), experts placed whole (ep)
SHARDINGS = {
    "mixtral": [(2, 1)],
    "qwen2_moe": [(2, 1)],
    "qwen3_moe": [(1, 8)],
    "deepseek_v3": [(2, 4)],
    "llama4": [(2, 2)],
    "gpt_oss": [(4, 1)],
}
REAL = [
    "mixtral-8x7b.json", "llama-3-8b.json", "deepseek-v3.json", "qwen3-30b-a3b.json",
    "llama-4-scout-17b-16e.json", "llama-4-maverick-17b-128e.json",
]  # fmt: skip
REAL_SHARDINGS = {"mixtral-8x7b.json": [(2, 1)], "deepseek-v3.json": [(8, 8)], "qwen3-30b-a3b.json": [(4, 1)]}


@functools.cache
def truth() -> dict[str, Any]:
    """Per case: its config.json, the layers that hold experts or a dense MLP, and per ``"tp,ep"`` the
    per-rank shape (without M) and layer count of every operation, from transformers' model."""
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run(
            [sys.executable, __file__], cwd=cwd, capture_output=True, text=True, timeout=900, check=False
        )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def planned(manifest: dict, batch: int) -> dict[str, list]:
    """A plan.json in the same form: per operation, [shape at ``batch`` without M, layers that run it]."""
    out = {}
    for name, entry in manifest["problems"].items():
        step = next(s for s in entry["per_batch"] if s["batch"] == batch)
        shape = {k: v for k, v in step["shape"].items() if k != "M"}
        if entry["kernel"] == "triton_attention":
            name, shape = "attention", {"heads": shape["heads"], "head_dim": shape["head_dim"]}
        out[name] = [shape, entry["layers"]]
    return out


# ---- run as a script: everything below imports torch and transformers ----


def _configs() -> dict[str, Any]:
    from transformers import (
        DeepseekV2Config,
        DeepseekV3Config,
        GptOssConfig,
        GraniteMoeSharedConfig,
        Llama4Config,
        Llama4TextConfig,
        LlamaConfig,
        MixtralConfig,
        OlmoeConfig,
        Qwen2MoeConfig,
        Qwen3MoeConfig,
    )  # fmt: skip

    cases = {
        "mixtral": MixtralConfig(
            **SMALL, intermediate_size=96, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2
        ),
        "qwen2_moe": Qwen2MoeConfig(  # layers 0, 2 dense off the step grid, 3 dense by mlp_only_layers
            **SMALL, intermediate_size=96, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=32, shared_expert_intermediate_size=80, decoder_sparse_step=2, mlp_only_layers=[3],
        ),
        "qwen3_moe": Qwen3MoeConfig(  # head_dim 24, not hidden / heads
            **SMALL, intermediate_size=96, num_key_value_heads=2, head_dim=24, num_experts=8, num_experts_per_tok=2,
            moe_intermediate_size=32, mlp_only_layers=[0],
        ),
        "deepseek_v2_lite": DeepseekV2Config(  # q_lora_rank null: a plain q projection
            **SMALL, **MLA, intermediate_size=96, n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=2,
            moe_intermediate_size=16, first_k_dense_replace=1, q_lora_rank=None,
        ),
        "deepseek_v3": DeepseekV3Config(
            **SMALL, **MLA, intermediate_size=96, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
            moe_intermediate_size=16, first_k_dense_replace=1, q_lora_rank=48, n_group=2, topk_group=1,
        ),
        "llama4_text": Llama4TextConfig(  # MoE every second layer, intermediate_size_mlp wide dense MLPs between
            **SMALL, intermediate_size=96, intermediate_size_mlp=128, num_key_value_heads=2, head_dim=16,
            num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=2,
        ),
        "olmoe": OlmoeConfig(
            **SMALL, intermediate_size=96, num_experts=4, num_experts_per_tok=2, eos_token_id=2, pad_token_id=1
        ),
        "granitemoeshared": GraniteMoeSharedConfig(
            **SMALL, intermediate_size=96, num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=40
        ),
        "gpt_oss": GptOssConfig(
            **SMALL, intermediate_size=96, num_key_value_heads=2, head_dim=24, num_local_experts=4,
            num_experts_per_tok=2,
        ),
        "llama": LlamaConfig(**SMALL, intermediate_size=96, num_key_value_heads=2),
    }  # fmt: skip
    out = {name: (json.loads(cfg.to_json_string(use_diff=False)), cfg) for name, cfg in cases.items()}
    # the same models spelled otherwise: Qwen3-MoE's expert count as num_experts, as the hub's files have it
    # (transformers writes num_local_experts); Llama-4's decoder under text_config of the multimodal Llama4Config
    qwen3 = dict(out["qwen3_moe"][0])
    qwen3["num_experts"] = qwen3.pop("num_local_experts")
    out["qwen3_moe_num_experts"] = (qwen3, cases["qwen3_moe"])
    wrapper = Llama4Config(text_config=out["llama4_text"][0])
    out["llama4"] = (json.loads(wrapper.to_json_string(use_diff=False)), cases["llama4_text"])
    return out


def _nk(*linears: Any) -> tuple[int, int]:
    """(N, K) of the GEMM that runs these linears fused along their outputs (they share the input)."""
    ks = {lin.weight.shape[1] for lin in linears}
    assert len(ks) == 1, ks
    return sum(lin.weight.shape[0] for lin in linears), ks.pop()


def _col(n_k: tuple[int, int], tp: int) -> dict[str, int]:
    assert n_k[0] % tp == 0
    return {"N": n_k[0] // tp, "K": n_k[1]}


def _row(n_k: tuple[int, int], tp: int) -> dict[str, int]:
    assert n_k[1] % tp == 0
    return {"N": n_k[0], "K": n_k[1] // tp}


def _attention(att: Any, tp: int, found: dict[str, list]) -> None:
    if hasattr(att, "kv_b_proj"):  # MLA; vLLM fuses q_a_proj and kv_a_proj_with_mqa into one replicated GEMM
        if getattr(att, "q_a_proj", None) is not None:
            found["fused_qkv_a_proj"].append(dict(zip("NK", _nk(att.q_a_proj, att.kv_a_proj_with_mqa), strict=True)))
            found["q_b_proj"].append(_col(_nk(att.q_b_proj), tp))
        else:
            found["q_proj"].append(_col(_nk(att.q_proj), tp))
            found["kv_a_proj_with_mqa"].append(dict(zip("NK", _nk(att.kv_a_proj_with_mqa), strict=True)))
        found["kv_b_proj"].append(_col(_nk(att.kv_b_proj), tp))
    else:
        hd = att.head_dim
        q, hidden = _nk(att.q_proj)
        kv_heads = att.k_proj.weight.shape[0] // hd
        kv_per_rank = kv_heads // tp if tp <= kv_heads else 1
        found["qkv_proj"].append({"N": q // tp + 2 * kv_per_rank * hd, "K": hidden})
        found["attention"].append({"heads": q // hd // tp, "head_dim": hd})
    found["o_proj"].append(_row(_nk(att.o_proj), tp))


def _experts(experts: Any, topk: int, tp: int, ep: int) -> dict[str, int]:
    """transformers stores gate_up [E, 2I, H] and down [E, H, I], except Llama-4 and gpt-oss: [E, H, 2I], [E, I, H]."""
    w1, w2 = tuple(experts.gate_up_proj.shape), tuple(experts.down_proj.shape)
    if type(experts).__name__ in ("Llama4TextExperts", "GptOssExperts"):
        e, h, two_i = w1
        assert w2 == (e, two_i // 2, h)
    else:
        e, two_i, h = w1
        assert w2 == (e, h, two_i // 2)
    local, inter = (e // ep, two_i // 2) if ep > 1 else (e, two_i // 2 // tp)
    return {"E": local, "H": h, "I": inter, "topk": topk}


def _mlp(prefix: str, mlp: Any, tp: int, found: dict[str, list]) -> None:
    if hasattr(mlp, "input_linear"):  # Granite's shared MLP: gate and up already one weight
        gate_up, down = _nk(mlp.input_linear), _nk(mlp.output_linear)
    else:
        gate_up, down = _nk(mlp.gate_proj, mlp.up_proj), _nk(mlp.down_proj)
    found[f"{prefix}gate_up_proj"].append(_col(gate_up, tp))
    found[f"{prefix}down_proj"].append(_row(down, tp))


def _ffn(layer: Any) -> Any:
    return next(getattr(layer, n) for n in ("mlp", "feed_forward", "block_sparse_moe") if hasattr(layer, n))


def weight_problems(model: Any, topk: int, tp: int, ep: int) -> dict[str, list]:
    """Per planned operation: [its per-rank shape without M, how many layers hold its weight]."""
    found: dict[str, list[dict[str, int]]] = defaultdict(list)
    for layer in model.model.layers:
        _attention(layer.self_attn, tp, found)
        ffn = _ffn(layer)
        if not hasattr(ffn, "experts"):
            _mlp("", ffn, tp, found)
            continue
        router = ffn.gate if hasattr(ffn, "gate") else ffn.router
        found["moe_router"].append(dict(zip("NK", tuple(router.weight.shape), strict=True)))
        found["moe_experts"].append(_experts(ffn.experts, topk, tp, ep))
        for owner, name in ((ffn, "shared_expert"), (ffn, "shared_experts"), (layer, "shared_mlp")):
            if getattr(owner, name, None) is not None:
                _mlp("shared_expert_", getattr(owner, name), tp, found)
    vocab, hidden = _nk(model.lm_head)
    found["lm_head"].append({"N": -(-vocab // 64) * 64 // tp, "K": hidden})
    out = {}
    for name, shapes in found.items():
        assert all(s == shapes[0] for s in shapes), (name, shapes)
        out[name] = [shapes[0], len(shapes)]
    return out


def _report(data: dict, decoder: Any, shardings: list[tuple[int, int]]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(decoder)
    moe = sum(hasattr(_ffn(layer), "experts") for layer in model.model.layers)
    total = len(model.model.layers)
    topk = getattr(decoder, "num_experts_per_tok", 0) if moe else 0
    return {
        "config": data,
        "layers": {"all": total, "dense": total - moe, "moe": moe},
        "weights": {f"{tp},{ep}": weight_problems(model, topk, tp, ep) for tp, ep in [(1, 1), *shardings]},
    }


def main() -> None:
    from transformers import AutoConfig

    out = {}
    for name, (data, decoder) in _configs().items():
        out[name] = _report(data, decoder, SHARDINGS.get(name, []))
    for file in REAL:
        data = json.loads((MODELS / file).read_text())
        shapes_only = {k: v for k, v in data.items() if k != "quantization_config"}  # no quantiser on meta
        hf = AutoConfig.for_model(**shapes_only)
        out[file] = _report(data, getattr(hf, "text_config", hf), REAL_SHARDINGS.get(file, []))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
