"""The kernel calls of one forward pass on one rank, with the number of layers that run each.

Per layer, in execution order: attention (vLLM's fused QKV projection, the attention kernel, o_proj; for
DeepSeek's MLA the low-rank projections instead, the attention core not being planned), then either the dense
MLP (fused gate_up, down) or the MoE block (router GEMM, the routed experts as one ``fused_moe`` problem as
vLLM's ``fused_experts`` runs them, the shared experts' gate_up and down); then the LM head once. Dense-MLP
problems count the dense layers, MoE problems the MoE layers, attention every layer.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from cotune.tuner.codesign.decoder import Dim, GqaAttention, MlaAttention, ModelConfig
from cotune.tuner.codesign.sharding import (
    SINGLE_GPU,
    Parallelism,
    experts_per_rank,
    kv_heads_per_rank,
    split,
    vocab_per_rank,
)
from cotune.tuner.errors import SpecError

Phase = Literal["decode", "prefill"]
PHASES: tuple[Phase, ...] = ("decode", "prefill")
MATMUL, ATTENTION, FUSED_MOE = "triton_matmul", "triton_attention", "fused_moe"
DEFAULT_BATCHES = (1, 16, 64)
# vLLM benchmark_moe.py's batch sizes, the M keys of the fused-MoE config files vLLM and SGLang ship
SERVER_MOE_BATCHES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096)
MAX_BATCH = 1 << 20
MAX_SEQ_LEN = 1 << 24  # above the longest context on the hub (10M tokens)


class Scope(enum.StrEnum):
    """Which layers run a problem: every layer, the dense-MLP layers, the MoE layers, or once (the LM head)."""

    ALL = "all"
    DENSE = "dense"
    MOE = "moe"
    HEAD = "head"


@dataclass(frozen=True)
class PlannedProblem:
    """One kernel call at one token count, and how often it runs per forward pass.

    Time per forward pass = sum of ``time(shape) * count_per_layer * layers``. ``batch`` is None for the
    fused-MoE entries that only fill the servers' batch list (no planned batch has that many tokens).
    """

    name: str
    kernel: str
    shape: Mapping[str, int]
    batch: int | None
    tokens: int
    scope: Scope
    layers: int
    count_per_layer: int = 1

    def to_json(self) -> dict[str, object]:
        return {"batch": self.batch, "tokens": self.tokens, "shape": dict(self.shape)}


def positive_ints(values: Iterable[int], what: str, limit: int = MAX_BATCH) -> list[int]:
    out = list(dict.fromkeys(values))
    if not out:
        raise SpecError(f"plan: give at least one {what}")
    bad = [v for v in out if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= limit]
    if bad:
        raise SpecError(f"plan: {what} must be positive integers up to {limit}, got {', '.join(map(str, bad))}")
    return out


def check_phase(phase: str) -> Phase:
    if phase not in PHASES:
        raise SpecError(f"plan: phase must be one of {', '.join(PHASES)}, got {phase!r}")
    return cast(Phase, phase)


def check_seq_len(model: ModelConfig, seq_len: int) -> int:
    (seq_len,) = positive_ints([seq_len], "seq_len", limit=MAX_SEQ_LEN)
    limit = model.max_position_embeddings
    if limit is not None and seq_len > limit:
        raise SpecError(f"plan: seq_len {seq_len} exceeds the model's max_position_embeddings {limit}")
    return seq_len


def layer_counts(model: ModelConfig) -> dict[Scope, int]:
    return {
        Scope.ALL: model.num_hidden_layers,
        Scope.DENSE: model.dense_layers,
        Scope.MOE: len(model.moe_layers) if model.experts else 0,
        Scope.HEAD: 1,
    }


Call = tuple[str, str, dict[str, int], Scope]


def _gqa_calls(
    att: GqaAttention, hidden: int, par: Parallelism, batch: int, tokens: int, seq_len: int, phase: Phase
) -> list[Call]:
    heads, kv, hd = split(att.heads, par.tp), kv_heads_per_rank(att.kv_heads, par.tp), att.head_dim
    seq_q, causal = (1, 0) if phase == "decode" else (seq_len, 1)
    core = {"batch": batch, "heads": heads, "seq_q": seq_q, "seq_k": seq_len, "head_dim": hd, "causal": causal}
    return [
        ("qkv_proj", MATMUL, {"M": tokens, "N": (heads + 2 * kv) * hd, "K": hidden}, Scope.ALL),
        (f"attention_{phase}", ATTENTION, core, Scope.ALL),
        ("o_proj", MATMUL, {"M": tokens, "N": hidden, "K": heads * hd}, Scope.ALL),
    ]


def _mla_calls(att: MlaAttention, hidden: int, par: Parallelism, tokens: int) -> list[Call]:
    """vLLM's DeepseekV2MLAAttention: q_a and kv_a fused into one replicated GEMM when q is low-rank."""
    heads = split(att.heads, par.tp)
    kv_a = att.kv_lora_rank + att.qk_rope_head_dim
    if att.q_lora_rank is not None:
        q = [
            ("fused_qkv_a_proj", MATMUL, {"M": tokens, "N": att.q_lora_rank + kv_a, "K": hidden}, Scope.ALL),
            ("q_b_proj", MATMUL, {"M": tokens, "N": heads * att.qk_head_dim, "K": att.q_lora_rank}, Scope.ALL),
        ]
    else:
        q = [
            ("q_proj", MATMUL, {"M": tokens, "N": heads * att.qk_head_dim, "K": hidden}, Scope.ALL),
            ("kv_a_proj_with_mqa", MATMUL, {"M": tokens, "N": kv_a, "K": hidden}, Scope.ALL),
        ]
    kv_b = heads * (att.qk_nope_head_dim + att.v_head_dim)
    return q + [
        ("kv_b_proj", MATMUL, {"M": tokens, "N": kv_b, "K": att.kv_lora_rank}, Scope.ALL),
        ("o_proj", MATMUL, {"M": tokens, "N": hidden, "K": heads * att.v_head_dim}, Scope.ALL),
    ]


def _mlp(prefix: str, width: Dim, hidden: int, tp: int, tokens: int, scope: Scope) -> list[Call]:
    inter = split(width, tp)
    return [
        (f"{prefix}gate_up_proj", MATMUL, {"M": tokens, "N": 2 * inter, "K": hidden}, scope),
        (f"{prefix}down_proj", MATMUL, {"M": tokens, "N": hidden, "K": inter}, scope),
    ]


def moe_experts_call(model: ModelConfig, par: Parallelism, tokens: int) -> Call:
    """The routed experts of one MoE layer as one fused_moe problem: (M, E local, H, I per rank, topk)."""
    assert model.experts is not None
    local, inter = experts_per_rank(model.experts, par)
    shape = {"M": tokens, "E": local, "H": model.hidden_size, "I": inter, "topk": model.experts.topk}
    return ("moe_experts", FUSED_MOE, shape, Scope.MOE)


def _ffn_calls(model: ModelConfig, par: Parallelism, tokens: int) -> list[Call]:
    hidden, out = model.hidden_size, []
    if model.dense_layers and model.mlp_intermediate is not None:
        out += _mlp("", model.mlp_intermediate, hidden, par.tp, tokens, Scope.DENSE)
    if model.is_moe:
        assert model.experts is not None
        router = {"M": tokens, "N": model.experts.count.value, "K": hidden}  # replicated on every rank
        out += [("moe_router", MATMUL, router, Scope.MOE), moe_experts_call(model, par, tokens)]
        if model.shared_intermediate is not None:
            out += _mlp("shared_expert_", model.shared_intermediate, hidden, par.tp, tokens, Scope.MOE)
    return out


def _forward_calls(
    model: ModelConfig, par: Parallelism, batch: int, tokens: int, seq_len: int, phase: Phase
) -> list[Call]:
    hidden, att = model.hidden_size, model.attention
    if isinstance(att, GqaAttention):
        calls = _gqa_calls(att, hidden, par, batch, tokens, seq_len, phase)
    else:
        calls = _mla_calls(att, hidden, par, tokens)
    head = {"M": batch, "N": vocab_per_rank(model.vocab_size, par.tp), "K": hidden}
    return [*calls, *_ffn_calls(model, par, tokens), ("lm_head", MATMUL, head, Scope.HEAD)]


def layer_problems(
    model: ModelConfig,
    batches: Sequence[int] | None,
    seq_len: int,
    *,
    phase: Phase = "decode",
    parallel: Parallelism = SINGLE_GPU,
) -> list[PlannedProblem]:
    """Every kernel call of one forward pass on one rank, per batch size, in execution order.

    ``decode``: each of ``batch`` sequences adds one token against a KV cache of ``seq_len``, so GEMMs have
    M = batch. ``prefill``: ``batch`` prompts of ``seq_len`` tokens, causal, so GEMMs have M = batch *
    seq_len and the LM head M = batch (only the last position's logits are sampled). ``batches=None`` plans
    1, 16 and 64, and for an MoE model also the fused-MoE problem at every M of the servers' batch list.
    """
    if parallel.ep > 1 and not model.is_moe:
        raise SpecError(f"plan: --ep {parallel.ep}: this model has no experts to place")
    server_list = batches is None and model.is_moe
    batches = positive_ints(DEFAULT_BATCHES if batches is None else batches, "batch sizes")
    phase = check_phase(phase)
    seq_len = check_seq_len(model, seq_len)
    counts = layer_counts(model)
    out: list[PlannedProblem] = []
    for batch in batches:
        tokens = batch if phase == "decode" else batch * seq_len
        for name, kernel, shape, scope in _forward_calls(model, parallel, batch, tokens, seq_len, phase):
            out.append(PlannedProblem(name, kernel, shape, batch, tokens, scope, counts[scope]))
    if server_list:
        planned = {p.tokens for p in out if p.kernel == FUSED_MOE}
        for m in (m for m in SERVER_MOE_BATCHES if m not in planned):
            name, kernel, shape, scope = moe_experts_call(model, parallel, m)
            out.append(PlannedProblem(name, kernel, shape, None, m, scope, counts[scope]))
    return out
