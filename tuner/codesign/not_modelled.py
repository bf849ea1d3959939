"""What a model's layers compute that no planned problem times, named per model so nothing is dropped silently.

Every plan leaves out the same small operations (norms, rotary embedding, residual adds, the sampler,
communication between ranks); plan.json lists those once under ``notes``. This module names what is particular
to one family or one config: biases, routing details, attention variants, activation variants, quantisation
the checkpoint declares. Values are read leniently (a flag of the wrong type is still worth naming); the sizes
that shape a problem are validated elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cotune.tuner.codesign.decoder import Family

Config = Mapping[str, Any]


def _truthy(cfg: Config, key: str, default: object = False) -> bool:
    return bool(cfg.get(key, default))


def _attention_biases(cfg: Config) -> list[str]:
    return ["attention projection biases (attention_bias)"] if _truthy(cfg, "attention_bias") else []


def _sliding(cfg: Config, *, gated_by: str | None = None) -> list[str]:
    window = cfg.get("sliding_window")
    if not window or (gated_by is not None and not _truthy(cfg, gated_by)):
        return []
    return [f"sliding-window attention (sliding_window={window}): attention is planned over the whole KV length"]


def _llama(cfg: Config, model_type: str | None) -> list[str]:
    out = _attention_biases(cfg) + _sliding(cfg)
    if _truthy(cfg, "mlp_bias"):
        out.append("MLP biases (mlp_bias)")
    if model_type not in (None, "llama"):
        out.append(
            f"model_type {model_type!r} is read as a Llama-style decoder (fused QKV, SiLU-gated MLP); "
            "anything its layers add beyond that"
        )
    return out


def _mixtral(cfg: Config, model_type: str | None) -> list[str]:
    return _attention_biases(cfg) + _sliding(cfg)


def _qwen2_moe(cfg: Config, model_type: str | None) -> list[str]:
    out = ["q/k/v projection biases (qkv_bias)"] if _truthy(cfg, "qkv_bias", True) else []
    if cfg.get("shared_expert_intermediate_size"):
        out.append("shared_expert_gate: the sigmoid gate on the shared expert's output (a [1, hidden] GEMV)")
    return out + _sliding(cfg, gated_by="use_sliding_window")


def _qwen3_moe(cfg: Config, model_type: str | None) -> list[str]:
    out = ["per-head q/k RMSNorm (q_norm, k_norm)"] + _attention_biases(cfg)
    return out + _sliding(cfg, gated_by="use_sliding_window")


def _deepseek(cfg: Config, model_type: str | None) -> list[str]:
    out = [
        "MLA attention core: attention over the compressed KV latent (kv_lora_rank + qk_rope_head_dim per "
        "token); at decode vLLM absorbs kv_b_proj into per-head batched matmuls, so the planned kv_b_proj GEMM "
        "is what runs in prefill",
        "q_a_layernorm and kv_a_layernorm on the low-rank latents",
    ]
    if cfg.get("topk_method") == "noaux_tc" or model_type == "deepseek_v3":
        out.append(
            "routing: sigmoid scores with the score-correction bias (e_score_correction_bias) and grouped top-k "
            f"(n_group={cfg.get('n_group')}, topk_group={cfg.get('topk_group')}), routed_scaling_factor"
        )
    else:
        out.append(f"routing: softmax top-k ({cfg.get('topk_method', 'greedy')}), routed_scaling_factor")
    layers = cfg.get("num_nextn_predict_layers")
    if layers:
        out.append(f"multi-token-prediction layers (num_nextn_predict_layers={layers}): speculative decoding only")
    return out + _attention_biases(cfg)


def _llama4(cfg: Config, model_type: str | None) -> list[str]:
    out = []
    if _truthy(cfg, "use_qk_norm", True):
        out.append("per-head q/k L2 norm on the RoPE layers (use_qk_norm)")
    chunk = cfg.get("attention_chunk_size")
    if chunk:
        out.append(f"chunked local attention on the RoPE layers (attention_chunk_size={chunk}): planned as full")
    if _truthy(cfg, "attn_temperature_tuning", True):
        out.append("attention temperature tuning of the NoPE layers (attn_temperature_tuning)")
    out.append("router: sigmoid of the top-k logit applied to the expert's input (vLLM apply_router_weight_on_input)")
    return out + _attention_biases(cfg)


def _olmoe(cfg: Config, model_type: str | None) -> list[str]:
    out = ["q/k RMSNorm over the whole projection (q_norm, k_norm)"]
    if cfg.get("clip_qkv") is not None:
        out.append(f"q/k/v clipping (clip_qkv={cfg['clip_qkv']})")
    return out + _attention_biases(cfg)


def _granite(cfg: Config, model_type: str | None) -> list[str]:
    scales = ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling")
    return [f"scalar multipliers ({', '.join(scales)})"] + _attention_biases(cfg)


def _gpt_oss(cfg: Config, model_type: str | None) -> list[str]:
    out = [
        "expert biases (gate_up_proj_bias, down_proj_bias)",
        "router bias",
        "attention sinks (one learned logit per head)",
        f"clamped SwiGLU of the experts (swiglu_limit={cfg.get('swiglu_limit', 7.0)}, alpha=1.702) and their "
        "interleaved gate/up columns",
    ]
    window = cfg.get("sliding_window")
    if window:
        out.append(f"sliding-window attention on alternate layers (sliding_window={window}): planned as full")
    return out + _attention_biases(cfg)


_BY_FAMILY: dict[Family, Callable[[Config, str | None], list[str]]] = {
    Family.LLAMA: _llama,
    Family.MIXTRAL: _mixtral,
    Family.QWEN2_MOE: _qwen2_moe,
    Family.QWEN3_MOE: _qwen3_moe,
    Family.DEEPSEEK_V2: _deepseek,
    Family.DEEPSEEK_V3: _deepseek,
    Family.LLAMA4: _llama4,
    Family.OLMOE: _olmoe,
    Family.GRANITE_MOE: _granite,
    Family.GPT_OSS: _gpt_oss,
}


def _quantisation(top: Config, text: Config) -> list[str]:
    quant = text.get("quantization_config", top.get("quantization_config"))
    if not isinstance(quant, dict):
        return []
    detail = ", ".join(f"{k}={quant[k]}" for k in ("quant_method", "weight_block_size") if k in quant)
    return [f"the checkpoint's quantization_config ({detail}): problems use the precisions plan is given"]


def not_modelled(family: Family, model_type: str | None, top: Config, text: Config) -> list[str]:
    """Names of what this config's layers compute beyond the planned problems; ``text`` is the decoder's part
    of the config (``text_config`` of a multimodal wrapper), ``top`` the whole file."""
    out = _BY_FAMILY[family](text, model_type) + _quantisation(top, text)
    if text is not top and isinstance(top.get("vision_config"), dict):
        out.append("the vision encoder and projector (vision_config)")
    return out
