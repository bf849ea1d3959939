"""A decoder as plan models it: attention, the dense MLP, the routed and shared experts, and which layers hold
which, with each size keeping the config key it was read from so that an error about it
(``--tp 3 does not divide moe_intermediate_size 768``) names what the user can look up in their file."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Family(enum.StrEnum):
    """The decoder layouts plan knows; ``LLAMA`` also stands for any dense Llama-style model."""

    LLAMA = "llama"
    MIXTRAL = "mixtral"
    QWEN2_MOE = "qwen2_moe"
    QWEN3_MOE = "qwen3_moe"
    DEEPSEEK_V2 = "deepseek_v2"
    DEEPSEEK_V3 = "deepseek_v3"
    LLAMA4 = "llama4"
    OLMOE = "olmoe"
    GRANITE_MOE = "granitemoe"
    GPT_OSS = "gpt_oss"


@dataclass(frozen=True)
class Dim:
    """A size and the config key it was read from (``text_config.intermediate_size``)."""

    value: int
    key: str


@dataclass(frozen=True)
class GqaAttention:
    """Multi-head or grouped-query attention: q, k, v projections of ``heads`` / ``kv_heads`` heads."""

    heads: Dim
    kv_heads: Dim
    head_dim: int

    def to_json(self) -> dict[str, object]:
        return {"kind": "gqa", "heads": self.heads.value, "kv_heads": self.kv_heads.value, "head_dim": self.head_dim}


@dataclass(frozen=True)
class MlaAttention:
    """DeepSeek's multi-head latent attention: low-rank q (``q_lora_rank``, or a plain q projection when it is
    null, as in DeepSeek-V2-Lite) and a compressed KV latent of ``kv_lora_rank`` plus a shared rope key."""

    heads: Dim
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def to_json(self) -> dict[str, object]:
        return {
            "kind": "mla",
            "heads": self.heads.value,
            "q_lora_rank": self.q_lora_rank,
            "kv_lora_rank": self.kv_lora_rank,
            "qk_nope_head_dim": self.qk_nope_head_dim,
            "qk_rope_head_dim": self.qk_rope_head_dim,
            "v_head_dim": self.v_head_dim,
        }


Attention = GqaAttention | MlaAttention


@dataclass(frozen=True)
class Experts:
    """The routed experts of one MoE layer: ``count`` experts of width ``intermediate``, ``topk`` per token."""

    count: Dim
    topk: int
    intermediate: Dim


@dataclass(frozen=True)
class ModelConfig:
    """One decoder as plan models it: attention, the dense MLP of the layers without experts, the routed and
    shared experts of the layers with them, and which layers those are.

    ``mlp_intermediate`` is None when every layer is an MoE layer; ``experts`` is None for a dense model;
    ``shared_intermediate`` is the total width of the shared experts (DeepSeek's ``n_shared_experts`` x
    ``moe_intermediate_size``), None when there are none. ``not_modelled`` names, for this model, what its
    layers compute that no planned problem times.
    """

    family: Family
    model_type: str | None
    hidden_size: int
    vocab_size: int
    num_hidden_layers: int
    attention: Attention
    mlp_intermediate: Dim | None
    experts: Experts | None
    shared_intermediate: Dim | None
    moe_layers: tuple[int, ...]
    max_position_embeddings: int | None
    not_modelled: tuple[str, ...] = ()

    @property
    def is_moe(self) -> bool:
        return self.experts is not None and bool(self.moe_layers)

    @property
    def dense_layers(self) -> int:
        return self.num_hidden_layers - len(self.moe_layers)

    def to_json(self) -> dict[str, object]:
        """The numbers a plan was made from, for plan.json."""
        out: dict[str, object] = {
            "family": self.family.value,
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "num_hidden_layers": self.num_hidden_layers,
            "attention": self.attention.to_json(),
            "mlp_intermediate": self.mlp_intermediate.value if self.mlp_intermediate else None,
        }
        if self.experts is not None:
            out["experts"] = {
                "count": self.experts.count.value,
                "topk": self.experts.topk,
                "intermediate": self.experts.intermediate.value,
            }
            out["shared_intermediate"] = self.shared_intermediate.value if self.shared_intermediate else None
            out["moe_layers"] = list(self.moe_layers)
        if self.max_position_embeddings is not None:
            out["max_position_embeddings"] = self.max_position_embeddings
        return out
