"""The torch steps of one fused-MoE layer around its two grouped GEMMs, as vLLM's ``fused_experts`` runs them
(``vllm/model_executor/layers/fused_moe/fused_moe.py``), and the fp32 reference of the whole layer.

- routing: softmax of the router logits, top-k, weights renormalised to sum to one (Mixtral's router,
  vLLM's ``fused_topk(renormalize=True)``);
- block alignment: (token, slot) pairs grouped by expert, each group padded to a multiple of BLOCK_SIZE_M
  (vLLM's ``moe_align_block_size``, same buffer sizes);
- fp8 quantisation of the activations: per tensor with a static scale (``fp8_w8a8``, as vLLM's
  benchmark_moe and static-scale checkpoints run it) or per token and group of 128 along K, computed
  before each GEMM (``per_token_group_quant_fp8``, the block-quantised path);
- SiLU-and-mul between the GEMMs, computed in fp32 and stored in the activation type.

The timed steps write into buffers allocated once and never read a value back to the host, so a layer
call can be captured in a CUDA graph (vLLM's tuner times it that way). They are torch ops where vLLM has
CUDA ops; their cost does not depend on the tuned config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from cotune.kernels.fused_moe import BLOCK

FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8 = torch.float8_e4m3fn
QUANT_GROUP = BLOCK  # fp8_block128: weight blocks of 128 x 128, activation groups of 128 along K
_EPS = 1e-10  # vLLM's floor on a group's absolute maximum, so an all-zero group gets a finite scale


def route_into(logits: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> None:
    """Top-``weights.shape[1]`` experts of each token from ``logits [M, E]`` (fp32), weights renormalised."""
    probs = torch.softmax(logits.float(), dim=-1)
    top, idx = torch.topk(probs, weights.shape[1], dim=-1)
    weights.copy_(top / top.sum(dim=-1, keepdim=True))
    ids.copy_(idx)


def route(logits: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(topk_weights [M, topk] fp32, topk_ids [M, topk] int32)``."""
    m, num_experts = logits.shape
    if not 1 <= topk <= num_experts:
        raise ValueError(f"topk={topk} must be between 1 and the number of experts ({num_experts})")
    weights = torch.empty(m, topk, dtype=torch.float32, device=logits.device)
    ids = torch.empty(m, topk, dtype=torch.int32, device=logits.device)
    route_into(logits, weights, ids)
    return weights, ids


@dataclass(frozen=True)
class Alignment:
    """(token, slot) pairs grouped by expert, as the grouped GEMM reads them.

    ``sorted_token_ids`` holds flat indices ``m * topk + j`` grouped by expert, each group padded with the
    sentinel ``M * topk`` to a multiple of the block size, then the sentinel up to vLLM's worst case
    ``M * topk + E * (block - 1)``; ``expert_ids[b]`` is the expert of M-block ``b`` (-1 past the used
    blocks); ``num_tokens_post_padded`` [1] is the padded length in use.
    """

    sorted_token_ids: torch.Tensor
    expert_ids: torch.Tensor
    num_tokens_post_padded: torch.Tensor
    block_m: int
    num_experts: int


def alignment_buffers(numel: int, num_experts: int, block_m: int, device: torch.device | str) -> Alignment:
    capacity = numel + num_experts * (block_m - 1)
    blocks = -(-capacity // block_m)
    return Alignment(
        torch.empty(capacity, dtype=torch.int32, device=device),
        torch.empty(blocks, dtype=torch.int32, device=device),
        torch.empty(1, dtype=torch.int32, device=device),
        block_m,
        num_experts,
    )


def align_into(topk_ids: torch.Tensor, out: Alignment) -> None:
    """Fill ``out`` from ``topk_ids``; within an expert, pairs keep their flat order (as vLLM's op does).

    Counting by scatter-add and placing by a stable sort and ``searchsorted`` keeps every size static: no
    value is read back to the host, so the step is graph-capturable.
    """
    flat = topk_ids.reshape(-1).long()
    numel, bm, device = flat.numel(), out.block_m, flat.device
    counts = torch.zeros(out.num_experts, dtype=torch.int64, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + bm - 1) // bm * bm
    padded_end = torch.cumsum(padded, 0)
    order = torch.argsort(flat, stable=True)
    sorted_experts = flat[order]
    rank = torch.arange(numel, device=device) - (torch.cumsum(counts, 0) - counts)[sorted_experts]
    out.sorted_token_ids.fill_(numel)
    out.sorted_token_ids[(padded_end - padded)[sorted_experts] + rank] = order.to(torch.int32)
    block_start = torch.arange(out.expert_ids.numel(), device=device) * bm
    expert = torch.searchsorted(padded_end, block_start, right=True)  # skips experts with no pairs
    out.expert_ids.copy_(torch.where(block_start < padded_end[-1], expert, -1))
    out.num_tokens_post_padded.copy_(padded_end[-1:])


def align(topk_ids: torch.Tensor, block_m: int, num_experts: int) -> Alignment:
    out = alignment_buffers(topk_ids.numel(), num_experts, block_m, topk_ids.device)
    align_into(topk_ids, out)
    return out


def silu_and_mul_into(h: torch.Tensor, out: torch.Tensor) -> None:
    """``out = silu(h[:, :I]) * h[:, I:]`` for ``h [T, 2I]``, computed in fp32 and stored in ``out``'s type."""
    gate, up = h.float().chunk(2, dim=-1)
    out.copy_(torch.nn.functional.silu(gate) * up)


# -- fp8 ----------------------------------------------------------------------------------------------


def quantize_static_into(x: torch.Tensor, scale: torch.Tensor, out: torch.Tensor) -> None:
    """e4m3 with one given scale: ``out = clamp(x / scale)``."""
    out.copy_((x.float() / scale).clamp(-FP8_MAX, FP8_MAX))


def _groups(x: torch.Tensor, group: int) -> torch.Tensor:
    if x.shape[-1] % group:
        raise ValueError(f"per-group fp8 needs a last dimension divisible by {group}, got {x.shape[-1]}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // group, group)


def quantize_groups_into(x: torch.Tensor, out: torch.Tensor, scale: torch.Tensor, group: int = QUANT_GROUP) -> None:
    """e4m3 per token and group of ``group`` along the last dimension, scale = group max / 448.

    ``out`` is ``x``'s shape in e4m3, ``scale`` [..., K / group] fp32.
    """
    xg = _groups(x.float(), group)
    s = (xg.abs().amax(dim=-1, keepdim=True).clamp(min=_EPS) / FP8_MAX).float()
    out.copy_((xg / s).clamp(-FP8_MAX, FP8_MAX).reshape(x.shape))
    scale.copy_(s.squeeze(-1))


def quantize_groups(x: torch.Tensor, group: int = QUANT_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty(x.shape, dtype=FP8, device=x.device)
    scale = torch.empty(*x.shape[:-1], x.shape[-1] // group, dtype=torch.float32, device=x.device)
    quantize_groups_into(x, out, scale, group)
    return out, scale


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, group: int = QUANT_GROUP) -> torch.Tensor:
    return (_groups(q.float(), group) * scale.unsqueeze(-1)).reshape(q.shape)


def quantize_blocks(w: torch.Tensor, block: int = QUANT_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 weights ``[N, K]`` with one scale per ``block x block`` tile: ``(q [N, K], scale [N/b, K/b])``."""
    n, k = w.shape
    if n % block or k % block:
        raise ValueError(f"block fp8 needs both weight dims divisible by {block}, got [{n}, {k}]")
    tiles = w.float().reshape(n // block, block, k // block, block)
    scale = (tiles.abs().amax(dim=(1, 3), keepdim=True).clamp(min=_EPS) / FP8_MAX).float()
    q = (tiles / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).reshape(n, k)
    return q, scale.reshape(n // block, k // block)


def dequantize_blocks(q: torch.Tensor, scale: torch.Tensor, block: int = QUANT_GROUP) -> torch.Tensor:
    n, k = q.shape
    tiles = q.float().reshape(n // block, block, k // block, block) * scale[:, None, :, None]
    return tiles.reshape(n, k)


# -- reference -----------------------------------------------------------------------------------------

ActQuant = Callable[[torch.Tensor], torch.Tensor]  # activation [T, K] -> what the GEMM multiplies, in fp32


def reference_intermediate(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    w1: Callable[[int], torch.Tensor],
    *,
    quant_a1: ActQuant,
    stored: torch.dtype | None,
) -> torch.Tensor:
    """The SiLU-and-mul activations ``[M, topk, I]`` in fp32, one GEMM per expert hit.

    ``w1(e)`` is expert e's ``[2I, H]`` weight as fp32 (dequantised where the kernel's is quantised).
    ``stored`` rounds the GEMM output and the activation to the type the layer stores them in: the fp8
    paths quantise that stored activation, so their reference must too (the plain paths pass None).
    """
    xq = quant_a1(x)
    out: torch.Tensor | None = None
    for expert in torch.unique(topk_ids).tolist():
        tokens, slots = torch.nonzero(topk_ids == expert, as_tuple=True)
        h = xq[tokens] @ w1(expert).t()
        if stored is not None:
            h = h.to(stored).float()
        gate, up = h.chunk(2, dim=-1)
        act = torch.nn.functional.silu(gate) * up
        if out is None:
            out = torch.zeros(*topk_ids.shape, act.shape[-1], dtype=torch.float32, device=x.device)
        out[tokens, slots] = act if stored is None else act.to(stored).float()
    assert out is not None  # topk >= 1: some expert is hit
    return out


def reference_output(
    act: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w2: Callable[[int], torch.Tensor],
    *,
    quant_a2: ActQuant,
) -> torch.Tensor:
    """``[M, H]`` fp32: each (token, slot)'s activation through its expert's ``[H, I]`` weight, weighted by the
    router, summed over the slots."""
    m, topk, inter = act.shape
    aq = quant_a2(act.reshape(m * topk, inter)).reshape(m, topk, inter)
    out: torch.Tensor | None = None
    for expert in torch.unique(topk_ids).tolist():
        tokens, slots = torch.nonzero(topk_ids == expert, as_tuple=True)
        y = (aq[tokens, slots] @ w2(expert).t()) * topk_weights[tokens, slots].float()[:, None]
        if out is None:
            out = torch.zeros(m, y.shape[-1], dtype=torch.float32, device=act.device)
        out.index_add_(0, tokens, y)
    assert out is not None
    return out
