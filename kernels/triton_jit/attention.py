"""Flash-attention forward pass in Triton: ``softmax(Q K^T / sqrt(d)) V`` without materialising the scores.

Follows the forward pass of Triton's fused-attention tutorial: each program owns a block of ``BLOCK_M`` query
rows of one (batch, head), streams the keys and values in blocks of ``BLOCK_N`` and keeps an online softmax
(running row max and row sum in fp32), so the ``seq_q x seq_k`` score matrix never leaves registers.

Tensors are ``[batch, heads, seq, head_dim]`` and made contiguous with 16-byte aligned storage, so the kernel
needs no strides: every offset is a multiple of the constexpr ``HEAD_DIM``, which lets Triton vectorise the
loads (and pipeline them through shared memory) exactly as its JIT would for the same tensors, and makes an
ahead-of-time compile (:mod:`cotune.kernels.triton_jit.aot`) see the same kernel a real launch runs.

Causal masking is top-left aligned and only defined for ``seq_q == seq_k``, where top-left and bottom-right
alignment (torch's ``is_causal`` versus FlashAttention's) agree; the launcher rejects the other case.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

HEAD_DIMS = (16, 32, 64, 128, 256)
ALIGN_BYTES = 16  # what Triton's JIT checks before it assumes a pointer may be loaded in 16-byte vectors
LOG2_E = 1.4426950408889634  # softmax in base 2: exp(x) == exp2(x * log2(e)), and exp2 is one instruction


@triton.jit
def _attend_blocks(
    acc,
    m_i,
    l_i,
    q,
    k_base,
    v_base,
    offs_m,
    start,
    end,
    seq_k,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Fold key/value blocks ``[start, end)`` into the running softmax. ``MASKED`` blocks may run past
    ``seq_k`` or cross the causal diagonal; the others are known to be fully visible, so skip the masks."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        kt_ptrs = k_base + cols[None, :] * HEAD_DIM + offs_d[:, None]  # K^T block, [HEAD_DIM, BLOCK_N]
        v_ptrs = v_base + cols[:, None] * HEAD_DIM + offs_d[None, :]  # [BLOCK_N, HEAD_DIM]
        if MASKED:
            kt = tl.load(kt_ptrs, mask=cols[None, :] < seq_k, other=0.0)
            v = tl.load(v_ptrs, mask=cols[:, None] < seq_k, other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        if MASKED:
            visible = cols[None, :] < seq_k
            if CAUSAL:
                visible = visible & (offs_m[:, None] >= cols[None, :])
            qk = tl.where(visible, qk, float("-inf"))
        # The first block folded in holds column 0, which every row sees: from then on m_i is finite, and
        # exp2(m_i - m_new) never meets -inf - -inf.
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def attention_fwd(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    seq_q,
    seq_k,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One program: a block of ``BLOCK_M`` query rows of one (batch, head). ``qk_scale`` is
    ``log2(e) / sqrt(HEAD_DIM)``.

    The grid is one-dimensional, query blocks of a head adjacent so that they share its K and V in L2, and
    so that batch * heads is not bound by the 65535 programs a second grid axis allows.
    """
    m_blocks = tl.cdiv(seq_q, BLOCK_M)
    start_m = tl.program_id(0) % m_blocks
    bh = (tl.program_id(0) // m_blocks).to(tl.int64)  # batch * heads * seq * head_dim may pass 2**31
    q_base = tl.multiple_of(q_ptr + bh * seq_q * HEAD_DIM, 16)
    o_base = tl.multiple_of(o_ptr + bh * seq_q * HEAD_DIM, 16)
    k_base = tl.multiple_of(k_ptr + bh * seq_k * HEAD_DIM, 16)
    v_base = tl.multiple_of(v_ptr + bh * seq_k * HEAD_DIM, 16)

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    q = tl.load(q_base + rows, mask=offs_m[:, None] < seq_q, other=0.0)  # padding rows are computed, not stored

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Key blocks below `full_end` are visible to every row of this program: before the causal diagonal and
    # inside seq_k. The blocks from there to `end` need masks.
    if CAUSAL:
        end = tl.minimum((start_m + 1) * BLOCK_M, seq_k)
        full_end = (start_m * BLOCK_M) // BLOCK_N * BLOCK_N
    else:
        end = seq_k
        full_end = seq_k // BLOCK_N * BLOCK_N
    acc, m_i, l_i = _attend_blocks(
        acc, m_i, l_i, q, k_base, v_base, offs_m, 0, full_end, seq_k, qk_scale,
        HEAD_DIM, BLOCK_N, False, CAUSAL, DOT_PRECISION,
    )  # fmt: skip
    acc, m_i, l_i = _attend_blocks(
        acc, m_i, l_i, q, k_base, v_base, offs_m, full_end, end, seq_k, qk_scale,
        HEAD_DIM, BLOCK_N, True, CAUSAL, DOT_PRECISION,
    )  # fmt: skip

    out = acc / l_i[:, None]
    tl.store(o_base + rows, out.to(o_ptr.dtype.element_ty), mask=offs_m[:, None] < seq_q)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs use IEEE fp32 products: Triton's default for them is tf32, 10 mantissa bits."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _prepared(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    return x if x.data_ptr() % ALIGN_BYTES == 0 else x.clone()


def check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    """Raise ValueError for inputs the kernel does not handle."""
    if q.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"need q [b, h, sq, d] and k, v [b, h, sk, d]; got {tuple(q.shape)}, {tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[3] not in HEAD_DIMS:
        raise ValueError(f"head_dim {q.shape[3]} is not one of {HEAD_DIMS}")
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal attention needs seq_q == seq_k; got {q.shape[2]} and {k.shape[2]}")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    BLOCK_M: int,
    BLOCK_N: int,
    num_warps: int,
    num_stages: int,
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(head_dim)) v`` for ``[batch, heads, seq, head_dim]`` tensors, in q's dtype."""
    check_shapes(q, k, v, causal)
    q, k, v = _prepared(q), _prepared(k), _prepared(v)
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    o = torch.empty_like(q)
    grid = (triton.cdiv(seq_q, BLOCK_M) * batch * heads,)
    attention_fwd[grid](
        q, k, v, o, seq_q, seq_k, LOG2_E / math.sqrt(head_dim),
        HEAD_DIM=head_dim, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, CAUSAL=causal,
        DOT_PRECISION=dot_precision(q.dtype), num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return o


def warmup(
    seq_q: int,
    seq_k: int,
    head_dim: int,
    dtype: torch.dtype,
    *,
    causal: bool,
    BLOCK_M: int,
    BLOCK_N: int,
    num_warps: int,
    num_stages: int,
) -> None:
    """Compile, without running, what :func:`attention` launches for these sizes (Triton's ``warmup`` takes
    dtypes for tensors); the timed process then finds the kernel in Triton's cache."""
    attention_fwd.warmup(
        dtype, dtype, dtype, dtype, seq_q, seq_k, LOG2_E / math.sqrt(head_dim),
        HEAD_DIM=head_dim, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, CAUSAL=causal,
        DOT_PRECISION=dot_precision(dtype), num_warps=num_warps, num_stages=num_stages, grid=(1,),
    )  # fmt: skip
