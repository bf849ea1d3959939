"""Fused MoE grouped GEMM in Triton: vLLM's ``fused_moe_kernel`` and the torch code around it.

Each token of the hidden states ``A [M, K]`` is routed to ``topk`` of ``E`` experts; the kernel computes
``C[m, j] = A[m] @ B[topk_ids[m, j]]^T`` for every (token, slot) with expert weights ``B [E, N, K]``, as one
grouped GEMM. It reads the (token, slot) pairs sorted by expert and padded per expert to a multiple of
``BLOCK_SIZE_M`` (:func:`align_block_size`, vLLM's ``moe_align_block_size``), so that every M-block of
rows belongs to one expert and multiplies one weight matrix.

fp8 follows vLLM's ``fp8_w8a8``: e4m3 activations with one scale, e4m3 weights with one scale per expert,
both applied to the fp32 accumulator, output in bf16. The same code runs compiled on CUDA tensors and in
Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# The launcher arguments a config supplies; the rest of a config (none today) is ignored.
BLOCK_PARAMS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M")


@triton.jit
def fused_moe_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    a_scale_ptr,
    b_scale_ptr,
    topk_weights_ptr,
    sorted_token_ids_ptr,
    expert_ids_ptr,
    num_tokens_post_padded_ptr,
    N,
    K,
    EM,
    num_valid_tokens,
    stride_am,
    stride_ak,
    stride_be,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_cn,
    BLOCK_SIZE_M: tl.constexpr,
    BLOCK_SIZE_N: tl.constexpr,
    BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
    top_k: tl.constexpr,
    MUL_ROUTED_WEIGHT: tl.constexpr,
    USE_FP8_W8A8: tl.constexpr,
):
    """One ``BLOCK_SIZE_M x BLOCK_SIZE_N`` tile of C for the expert that owns its M-block.

    Rows of a tile are entries of ``sorted_token_ids``: a flat (token, slot) index ``m * top_k + j``, or
    ``num_valid_tokens`` for padding, which is masked on load and store. Program ids walk GROUP_SIZE_M
    M-blocks down a column of N-blocks before moving right, so one expert's weight tile is reused from L2.
    """
    pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(EM, BLOCK_SIZE_M)
    num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    # The grid covers the worst-case padding; blocks past the real padded length have no rows.
    num_tokens_post_padded = tl.load(num_tokens_post_padded_ptr)
    if pid_m * BLOCK_SIZE_M >= num_tokens_post_padded:
        return

    # int64 offsets: token * stride overflows int32 for large M * K.
    offs_token_id = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M).to(tl.int64)
    offs_token = tl.load(sorted_token_ids_ptr + offs_token_id).to(tl.int64)
    token_mask = offs_token < num_valid_tokens
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)

    # Wrapping columns past N (instead of masking) keeps the B loads unmasked; the store masks them.
    offs_bn = (pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N).to(tl.int64)) % N
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    a_ptrs = a_ptr + (offs_token[:, None] // top_k * stride_am + offs_k[None, :] * stride_ak)
    b_ptrs = b_ptr + expert * stride_be + (offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn)

    accumulator = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        k_left = K - k * BLOCK_SIZE_K
        a = tl.load(a_ptrs, mask=token_mask[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        accumulator = tl.dot(a, b, acc=accumulator)
        a_ptrs += BLOCK_SIZE_K * stride_ak
        b_ptrs += BLOCK_SIZE_K * stride_bk

    if MUL_ROUTED_WEIGHT:
        weight = tl.load(topk_weights_ptr + offs_token, mask=token_mask, other=0.0)
        accumulator = accumulator * weight[:, None]
    if USE_FP8_W8A8:
        accumulator = accumulator * tl.load(a_scale_ptr) * tl.load(b_scale_ptr + expert)

    offs_cn = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    c_ptrs = c_ptr + stride_cm * offs_token[:, None] + stride_cn * offs_cn[None, :]
    c_mask = token_mask[:, None] & (offs_cn[None, :] < N)
    tl.store(c_ptrs, accumulator.to(c_ptr.dtype.element_ty), mask=c_mask)


@dataclass(frozen=True)
class Alignment:
    """(token, slot) pairs grouped by expert, as :func:`fused_moe_kernel` reads them.

    ``sorted_token_ids`` holds flat indices ``m * topk + j`` grouped by expert, each group padded with the
    sentinel ``M * topk`` to a multiple of the block size; ``expert_ids[b]`` is the expert of M-block ``b``
    (-1 past the used blocks); ``num_tokens_post_padded`` [1] is the padded length actually used.
    """

    sorted_token_ids: torch.Tensor
    expert_ids: torch.Tensor
    num_tokens_post_padded: torch.Tensor


def route(
    num_tokens: int, num_experts: int, topk: int, *, device: torch.device | str = "cpu", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing as a router layer produces it: softmax of seeded random logits, top-k, weights renormalised.

    Returns ``(topk_weights [M, topk] fp32, topk_ids [M, topk] int32)``.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(num_tokens, num_experts, generator=gen, device=device, dtype=torch.float32)
    weights, ids = torch.topk(torch.softmax(logits, dim=-1), topk, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), ids.to(torch.int32)


def align_block_size(topk_ids: torch.Tensor, block_m: int, num_experts: int) -> Alignment:
    """vLLM's ``moe_align_block_size`` in plain torch (not tuned, and outside the timed kernel)."""
    device = topk_ids.device
    flat = topk_ids.flatten().to(torch.int64)
    numel = flat.numel()
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    # At most min(E, numel) experts are hit, each wasting under one block: the grid needs no more rows.
    capacity = numel + min(num_experts, numel) * (block_m - 1)
    capacity = triton.cdiv(capacity, block_m) * block_m

    order = torch.argsort(flat, stable=True)
    sorted_experts = flat[order]
    rank_in_expert = torch.arange(numel, device=device) - (torch.cumsum(counts, 0) - counts)[sorted_experts]
    dest = (torch.cumsum(padded, 0) - padded)[sorted_experts] + rank_in_expert
    sorted_token_ids = torch.full((capacity,), numel, dtype=torch.int32, device=device)
    sorted_token_ids[dest] = order.to(torch.int32)

    block_experts = torch.repeat_interleave(torch.arange(num_experts, device=device), padded // block_m)
    expert_ids = torch.full((capacity // block_m,), -1, dtype=torch.int32, device=device)
    expert_ids[: block_experts.numel()] = block_experts.to(torch.int32)
    return Alignment(sorted_token_ids, expert_ids, padded.sum().reshape(1).to(torch.int32))


def moe_kernel_args(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    alignment: Alignment,
    topk: int,
    config: Mapping[str, int],
    *,
    a_scale: torch.Tensor | None = None,
    b_scale: torch.Tensor | None = None,
    topk_weights: torch.Tensor | None = None,
) -> tuple[tuple[int], tuple[object, ...], dict[str, object]]:
    """(grid, positional args, keyword args) of one launch, so a timed call does nothing but launch."""
    _, n, k = b.shape
    em = alignment.sorted_token_ids.numel()
    block = {name: int(config[name]) for name in BLOCK_PARAMS}
    grid = (triton.cdiv(em, block["BLOCK_SIZE_M"]) * triton.cdiv(n, block["BLOCK_SIZE_N"]),)
    c2 = c.view(-1, n)  # rows indexed by flat (token, slot)
    args = (
        a,
        b,
        c2,
        a_scale,
        b_scale,
        None if topk_weights is None else topk_weights.reshape(-1),  # indexed by flat (token, slot)
        alignment.sorted_token_ids,
        alignment.expert_ids,
        alignment.num_tokens_post_padded,
        n,
        k,
        em,
        a.shape[0] * topk,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(2),
        b.stride(1),
        c2.stride(0),
        c2.stride(1),
    )
    kwargs = {
        **block,
        "top_k": topk,
        "MUL_ROUTED_WEIGHT": topk_weights is not None,
        "USE_FP8_W8A8": a.dtype == torch.float8_e4m3fn,
        "num_warps": int(config.get("num_warps", 4)),
        "num_stages": int(config.get("num_stages", 2)),
    }
    return grid, args, kwargs


def output_for(a: torch.Tensor, n: int, topk: int) -> torch.Tensor:
    """The empty output ``[M, topk, N]``: bf16 for fp8 inputs (vLLM's fp8_w8a8), else the input type."""
    dtype = torch.bfloat16 if a.dtype == torch.float8_e4m3fn else a.dtype
    return torch.empty(a.shape[0], topk, n, dtype=dtype, device=a.device)


def launch(grid: tuple[int], args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    fused_moe_kernel[grid](*args, **kwargs)


def fused_moe(
    a: torch.Tensor,
    b: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    config: Mapping[str, int],
    a_scale: torch.Tensor | None = None,
    b_scale: torch.Tensor | None = None,
    topk_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``C [M, topk, N]`` with ``C[m, j] = A[m] @ B[topk_ids[m, j]]^T`` (times ``topk_weights[m, j]`` if given).

    For fp8 (e4m3) inputs ``a_scale`` [1] and ``b_scale`` [E] are required and C is bf16.
    """
    if a.dtype == torch.float8_e4m3fn and (a_scale is None or b_scale is None):
        raise ValueError("fp8 inputs need a_scale [1] and b_scale [E]")
    topk = topk_ids.shape[1]
    c = output_for(a, b.shape[1], topk)
    alignment = align_block_size(topk_ids, int(config["BLOCK_SIZE_M"]), b.shape[0])
    grid, args, kwargs = moe_kernel_args(
        a, b, c, alignment, topk, config, a_scale=a_scale, b_scale=b_scale, topk_weights=topk_weights
    )
    launch(grid, args, kwargs)
    return c


def reference(
    a: torch.Tensor,
    b: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    a_scale: torch.Tensor | None = None,
    b_scale: torch.Tensor | None = None,
    topk_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp32 ``[M, topk, N]`` per (token, slot) from the kernel's own inputs, fp8 ones dequantised by their scales.

    One fp32 GEMM per expert hit, over the tokens routed to it: gathering ``B[topk_ids]`` (or dequantising
    all of B) at once would take ``M * topk * N * K`` (or ``E * N * K``) floats.
    """
    a32 = a.float() if a_scale is None else a.float() * a_scale.float()
    out = torch.zeros(*topk_ids.shape, b.shape[1], dtype=torch.float32, device=a.device)
    for expert in torch.unique(topk_ids).tolist():
        tokens, slots = torch.nonzero(topk_ids == expert, as_tuple=True)
        weight = b[expert].float() if b_scale is None else b[expert].float() * b_scale[expert].float()
        out[tokens, slots] = a32[tokens] @ weight.t()
    return out if topk_weights is None else out * topk_weights.float()[..., None]
