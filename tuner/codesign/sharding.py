"""Per-rank sizes as vLLM shards a model over tensor-parallel (``--tp``) and expert-parallel (``--ep``) ranks.

The rules are vLLM's layers (``vllm/model_executor/layers/linear.py``, ``vocab_parallel_embedding.py``,
``fused_moe/layer.py``), so a planned shape is the weight one GPU of the server holds:

- column-parallel outputs (q/k/v, gate_up, DeepSeek's q_b_proj and kv_b_proj, lm_head) are split tp ways;
- ``QKVParallelLinear`` splits the query heads; it splits the KV heads too when tp <= KV heads, else each
  rank holds one KV head, replicated tp / KV-heads times (so tp must then be a multiple of the KV heads);
- row-parallel inputs (o_proj, down) are split tp ways;
- replicated layers (the router, DeepSeek's fused_qkv_a_proj / kv_a_proj_with_mqa) are whole on every rank;
- ``ParallelLMHead`` pads the vocabulary to a multiple of 64, then splits it tp ways;
- ``FusedMoE``: with expert parallelism each rank holds E / ep whole experts; without, every expert at
  intermediate / tp. vLLM's EP size is TP x DP: pass that product as ``--ep``.

vLLM asserts divisibility where it splits; so does this module, with a line that names the config key.
"""

from __future__ import annotations

from dataclasses import dataclass

from cotune.tuner.codesign.decoder import Dim, Experts
from cotune.tuner.errors import SpecError

MAX_RANKS = 1024
VOCAB_PADDING = 64  # vLLM's DEFAULT_VOCAB_PADDING_SIZE


@dataclass(frozen=True)
class Parallelism:
    tp: int = 1
    ep: int = 1  # 1: no expert parallelism

    def __post_init__(self) -> None:
        for flag, ways in (("--tp", self.tp), ("--ep", self.ep)):
            if isinstance(ways, bool) or not isinstance(ways, int) or not 1 <= ways <= MAX_RANKS:
                raise SpecError(f"plan: {flag} must be an integer from 1 to {MAX_RANKS}, got {ways!r}")

    def to_json(self) -> dict[str, int]:
        return {"tp": self.tp, "ep": self.ep}


SINGLE_GPU = Parallelism()


def split(dim: Dim, ways: int, flag: str = "--tp") -> int:
    """``dim`` over ``ways`` ranks, which must divide it (vLLM's ``divide``)."""
    if dim.value % ways:
        raise SpecError(f"plan: {flag} {ways} does not divide {dim.key} {dim.value}")
    return dim.value // ways


def kv_heads_per_rank(kv: Dim, tp: int) -> int:
    """KV heads one rank holds: split when tp <= KV heads, else one per rank, replicated (vLLM's rule)."""
    if tp <= kv.value:
        return split(kv, tp)
    if tp % kv.value:
        raise SpecError(
            f"plan: --tp {tp} is more than {kv.key} {kv.value} and not a multiple of it "
            "(vLLM replicates KV heads only a whole number of times)"
        )
    return 1


def vocab_per_rank(vocab: int, tp: int) -> int:
    """Rows of one rank's LM head: the vocabulary padded to a multiple of 64, split tp ways. The padding rows
    compute logits that are dropped; they are part of the GEMM the server runs."""
    padded = -(-vocab // VOCAB_PADDING) * VOCAB_PADDING
    if padded % tp:
        raise SpecError(f"plan: --tp {tp} does not divide vocab_size {vocab} padded to a multiple of 64 ({padded})")
    return padded // tp


def experts_per_rank(experts: Experts, par: Parallelism) -> tuple[int, int]:
    """(local experts, intermediate size per rank) of the fused-MoE layer."""
    if par.ep > 1:
        return split(experts.count, par.ep, "--ep"), experts.intermediate.value
    return experts.count.value, split(experts.intermediate, par.tp)
