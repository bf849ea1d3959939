"""One MoE layer as vLLM's ``fused_experts`` runs it, with one config for both of its grouped GEMMs.

``M`` tokens ``x [M, H]`` are routed to ``topk`` of ``E`` experts; expert e has ``w1[e] [2I, H]`` (gate and up
projections) and ``w2[e] [H, I]`` (down). One call routes, aligns the (token, slot) pairs to BLOCK_SIZE_M,
runs the w1 grouped GEMM into ``[M, topk, 2I]``, SiLU-and-mul into ``[M * topk, I]``, the w2 grouped GEMM
with the router weights applied into ``[M, topk, H]``, and sums over the slots into ``[M, H]``. Both GEMMs
are :func:`moe_gemm_kernel` launched with the same config, as vLLM and SGLang launch theirs.

Precisions, as the servers name them: fp16 and bf16 (activations and weights, fp32 accumulation); fp8
(``fp8_w8a8``): e4m3 weights with one scale per expert, activations quantised with one static scale per
GEMM, output in bf16; fp8_block128 (``fp8_w8a8`` with ``block_shape=[128, 128]``): e4m3 weights with a
scale per 128 x 128 block, activations quantised per token and group of 128 along K before each GEMM,
each K step's product scaled in fp32 (so BLOCK_SIZE_K is capped at 128, as vLLM caps it). The same code
runs compiled on CUDA tensors and in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from cotune.kernels.fused_moe import launch_block_k
from cotune.kernels.triton_jit.fused_moe_ops import (
    FP8,
    QUANT_GROUP,
    Alignment,
    align_into,
    alignment_buffers,
    quantize_groups_into,
    quantize_static_into,
    route_into,
    silu_and_mul_into,
)
from cotune.tuner.types import Precision

CONFIG_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
NO_SCALES, TENSOR_SCALES, BLOCK_SCALES = 0, 1, 2


def scale_mode(precision: Precision) -> int:
    return {Precision.FP8: TENSOR_SCALES, Precision.FP8_BLOCK128: BLOCK_SCALES}.get(precision, NO_SCALES)


@triton.jit
def moe_gemm_kernel(
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
    stride_asm,
    stride_ask,
    stride_bse,
    stride_bsk,
    stride_bsn,
    BLOCK_SIZE_M: tl.constexpr,
    BLOCK_SIZE_N: tl.constexpr,
    BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
    top_k: tl.constexpr,
    MUL_ROUTED_WEIGHT: tl.constexpr,
    SCALES: tl.constexpr,
    GROUP_N: tl.constexpr,
    GROUP_K: tl.constexpr,
):
    """One ``BLOCK_SIZE_M x BLOCK_SIZE_N`` tile of ``C = A @ B[expert]^T`` for the expert of its M-block.

    Rows of a tile are entries of ``sorted_token_ids``: a flat (token, slot) index, or ``num_valid_tokens``
    for padding, masked on load and store; A's row is that index over ``top_k`` (1 when A already holds
    one row per slot, as in the w2 GEMM). Program ids walk GROUP_SIZE_M M-blocks down a column of N-blocks
    before moving right, so an expert's weight tile is reused from L2. SCALES: 0 none; 1 one activation
    scale and one weight scale per expert, applied to the sum; 2 a scale per token and K group for A and
    per (GROUP_N x GROUP_K) block for B, applied to each K step's product.
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

    # The grid covers the worst-case padding; blocks past the padded length in use have no rows.
    if pid_m * BLOCK_SIZE_M >= tl.load(num_tokens_post_padded_ptr):
        return

    # int64: a token index times a stride overflows int32 for large M x H.
    offs_token_id = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M).to(tl.int64)
    offs_token = tl.load(sorted_token_ids_ptr + offs_token_id).to(tl.int64)
    token_mask = offs_token < num_valid_tokens
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)

    # Columns past N wrap around (instead of being masked) so that B loads need no mask; the store masks.
    offs_bn = (pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N).to(tl.int64)) % N
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    a_rows = offs_token // top_k
    a_ptrs = a_ptr + (a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak)
    b_ptrs = b_ptr + expert * stride_be + (offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn)
    if SCALES == 2:
        a_scale_ptrs = a_scale_ptr + a_rows * stride_asm
        b_scale_ptrs = b_scale_ptr + expert * stride_bse + (offs_bn // GROUP_N) * stride_bsn

    accumulator = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        k_left = K - k * BLOCK_SIZE_K
        a = tl.load(a_ptrs, mask=token_mask[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if SCALES == 2:
            group = (k * BLOCK_SIZE_K) // GROUP_K  # BLOCK_SIZE_K divides GROUP_K: a step is in one group
            a_scale = tl.load(a_scale_ptrs + group * stride_ask, mask=token_mask, other=0.0)
            b_scale = tl.load(b_scale_ptrs + group * stride_bsk)
            accumulator += tl.dot(a, b) * a_scale[:, None] * b_scale[None, :]
        else:
            accumulator = tl.dot(a, b, acc=accumulator)
        a_ptrs += BLOCK_SIZE_K * stride_ak
        b_ptrs += BLOCK_SIZE_K * stride_bk

    if MUL_ROUTED_WEIGHT:
        weight = tl.load(topk_weights_ptr + offs_token, mask=token_mask, other=0.0)
        accumulator = accumulator * weight[:, None]
    if SCALES == 1:
        accumulator = accumulator * tl.load(a_scale_ptr) * tl.load(b_scale_ptr + expert)

    offs_cn = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    c_ptrs = c_ptr + stride_cm * offs_token[:, None] + stride_cn * offs_cn[None, :]
    c_mask = token_mask[:, None] & (offs_cn[None, :] < N)
    tl.store(c_ptrs, accumulator.to(c_ptr.dtype.element_ty), mask=c_mask)


@dataclass(frozen=True)
class Launch:
    """One launch of :func:`moe_gemm_kernel` with every argument fixed, so calling it does nothing else."""

    grid: tuple[int]
    args: tuple[object, ...]
    kwargs: dict[str, object]

    def __call__(self) -> None:
        moe_gemm_kernel[self.grid](*self.args, **self.kwargs)


def _strides(t: torch.Tensor | None, dims: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None and t.dim() == dims else (0,) * dims


def gemm_launch(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    alignment: Alignment,
    config: Mapping[str, int],
    precision: Precision,
    *,
    top_k: int,
    a_scale: torch.Tensor | None = None,
    b_scale: torch.Tensor | None = None,
    topk_weights: torch.Tensor | None = None,
) -> Launch:
    """``c [rows, N]`` from ``a [rows_a, K]`` and ``b [E, N, K]`` (``c`` may be any view whose rows are flat
    (token, slot) indices). The grid is vLLM's: one program per M-block of the worst-case padding times the
    N-blocks, fewer when A has fewer rows than a block (then at most ``rows_a * top_k`` blocks are used)."""
    _, n, k = b.shape
    bm, bn = int(config["BLOCK_SIZE_M"]), int(config["BLOCK_SIZE_N"])
    em = alignment.sorted_token_ids.numel()
    if a.shape[0] < bm:
        em = min(em, a.shape[0] * top_k * bm)
    mode = scale_mode(precision)
    c2 = c.view(-1, n)
    s_a = _strides(a_scale, 2) if mode == BLOCK_SCALES else (0, 0)
    s_b = _strides(b_scale, 3) if mode == BLOCK_SCALES else (0, 0, 0)
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
        c2.shape[0],
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(2),
        b.stride(1),
        c2.stride(0),
        c2.stride(1),
        s_a[0],
        s_a[1],
        s_b[0],
        s_b[2],
        s_b[1],
    )
    kwargs = {
        "BLOCK_SIZE_M": bm,
        "BLOCK_SIZE_N": bn,
        "BLOCK_SIZE_K": launch_block_k(int(config["BLOCK_SIZE_K"]), precision),
        "GROUP_SIZE_M": int(config["GROUP_SIZE_M"]),
        "top_k": top_k,
        "MUL_ROUTED_WEIGHT": topk_weights is not None,
        "SCALES": mode,
        "GROUP_N": QUANT_GROUP if mode == BLOCK_SCALES else 0,
        "GROUP_K": QUANT_GROUP if mode == BLOCK_SCALES else 0,
        "num_warps": int(config["num_warps"]),
        "num_stages": int(config["num_stages"]),
    }
    return Launch((triton.cdiv(em, bm) * triton.cdiv(n, bn),), args, kwargs)


@dataclass(frozen=True)
class ExpertWeights:
    """A layer's expert weights as the kernel takes them, with their scales.

    ``w1 [E, 2I, H]``, ``w2 [E, H, I]``: fp16/bf16, or e4m3 with ``w1_scale``/``w2_scale`` of ``[E]`` (fp8) or
    ``[E, N / 128, K / 128]`` (fp8_block128). ``a1_scale``/``a2_scale`` [1] are the static activation
    scales of the fp8 path (the block path computes its activation scales in the call).
    """

    precision: Precision
    w1: torch.Tensor
    w2: torch.Tensor
    w1_scale: torch.Tensor | None = None
    w2_scale: torch.Tensor | None = None
    a1_scale: torch.Tensor | None = None
    a2_scale: torch.Tensor | None = None


class FusedMoELayer:
    """``fused_experts`` for fixed inputs and one config: buffers allocated here, each call only computes.

    ``x [M, H]`` is the layer's activation type (fp16, or bf16 for bf16 and both fp8 paths), ``logits [M, E]``
    the router's fp32 output. Calling it returns ``[M, H]`` in ``x``'s type (the same tensor every call).
    """

    def __init__(
        self, x: torch.Tensor, logits: torch.Tensor, weights: ExpertWeights, topk: int, config: Mapping[str, int]
    ) -> None:
        missing = [key for key in CONFIG_KEYS if key not in config]
        if missing:
            raise ValueError(f"fused_moe config lacks {', '.join(missing)}")
        m, h = x.shape
        e, two_i, h1 = weights.w1.shape
        if h1 != h or weights.w2.shape != (e, h, two_i // 2) or logits.shape != (m, e):
            raise ValueError(
                f"fused_moe shapes disagree: x {tuple(x.shape)}, logits {tuple(logits.shape)}, "
                f"w1 {tuple(weights.w1.shape)}, w2 {tuple(weights.w2.shape)} "
                "(want [M, H], [M, E], [E, 2I, H], [E, H, I])"
            )
        if not 1 <= topk <= e:
            raise ValueError(f"topk={topk} must be between 1 and E={e}")
        p, inter, dev = weights.precision, two_i // 2, x.device
        weight_scales = ("w1_scale", "w2_scale")
        scales = {TENSOR_SCALES: (*weight_scales, "a1_scale", "a2_scale"), BLOCK_SCALES: weight_scales}
        absent = [name for name in scales.get(scale_mode(p), ()) if getattr(weights, name) is None]
        if absent:
            raise ValueError(f"{p.value} weights need {', '.join(absent)}")
        if scale_mode(p) == BLOCK_SCALES and (h % QUANT_GROUP or inter % QUANT_GROUP):
            raise ValueError(f"{p.value} needs H and I multiples of {QUANT_GROUP}, got H={h}, I={inter}")
        self.x, self.logits, self.weights, self.precision = x, logits, weights, p
        self.topk_weights = torch.empty(m, topk, dtype=torch.float32, device=dev)
        self.topk_ids = torch.empty(m, topk, dtype=torch.int32, device=dev)
        self.alignment = alignment_buffers(m * topk, e, int(config["BLOCK_SIZE_M"]), dev)
        self.cache1 = torch.empty(m, topk, two_i, dtype=x.dtype, device=dev)
        self.cache2 = torch.empty(m * topk, inter, dtype=x.dtype, device=dev)
        self.cache3 = torch.empty(m, topk, h, dtype=x.dtype, device=dev)
        self.out = torch.empty(m, h, dtype=x.dtype, device=dev)
        mode = scale_mode(p)
        self.a1, self.a2 = x, self.cache2
        self.a1_scale, self.a2_scale = weights.a1_scale, weights.a2_scale
        if mode != NO_SCALES:
            self.a1 = torch.empty(m, h, dtype=FP8, device=dev)
            self.a2 = torch.empty(m * topk, inter, dtype=FP8, device=dev)
        if mode == BLOCK_SCALES:
            self.a1_scale = torch.empty(m, h // QUANT_GROUP, dtype=torch.float32, device=dev)
            self.a2_scale = torch.empty(m * topk, inter // QUANT_GROUP, dtype=torch.float32, device=dev)
        self.gemm1 = gemm_launch(
            self.a1, weights.w1, self.cache1, self.alignment, config, p,
            top_k=topk, a_scale=self.a1_scale, b_scale=weights.w1_scale,
        )  # fmt: skip
        self.gemm2 = gemm_launch(
            self.a2, weights.w2, self.cache3, self.alignment, config, p,
            top_k=1, a_scale=self.a2_scale, b_scale=weights.w2_scale, topk_weights=self.topk_weights,
        )  # fmt: skip

    def _quantize(self, x: torch.Tensor, out: torch.Tensor, scale: torch.Tensor | None) -> None:
        mode = scale_mode(self.precision)
        if mode == TENSOR_SCALES:
            assert scale is not None
            quantize_static_into(x, scale, out)
        elif mode == BLOCK_SCALES:
            assert scale is not None
            quantize_groups_into(x, out, scale)

    def __call__(self) -> torch.Tensor:
        route_into(self.logits, self.topk_weights, self.topk_ids)
        align_into(self.topk_ids, self.alignment)
        self._quantize(self.x, self.a1, self.a1_scale)
        self.gemm1()
        silu_and_mul_into(self.cache1.view(-1, self.cache1.shape[-1]), self.cache2)
        self._quantize(self.cache2, self.a2, self.a2_scale)
        self.gemm2()
        return torch.sum(self.cache3, dim=1, out=self.out)
