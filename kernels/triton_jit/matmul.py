"""Tiled Triton matmul ``C = A @ B`` (the structure of Triton's matmul tutorial) with grouped program
order, optional split-K, and per-tensor scales for fp8 inputs.

A is [M, K]; B is [K, N] with any strides (a linear layer passes ``W.t()`` of a [N, K] weight). fp32
runs as IEEE fp32 and tf32 as tf32 tensor-core math; fp16/bf16/fp8 accumulate in fp32. fp8 writes bf16
after multiplying by ``scale_a * scale_b``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import triton
import triton.language as tl


@triton.jit
def matmul_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    scale_a_ptr,
    scale_b_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cs,
    stride_cm,
    stride_cn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr,
    SCALED: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M row-blocks share each column-block of B while it is still in L2.
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = split * BLOCK_K + tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + (offs_m % M)[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + (offs_n % N)[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K * SPLIT_K)):
        k_left = K - (k * SPLIT_K + split) * BLOCK_K
        a = tl.load(a_ptrs, mask=tl.arange(0, BLOCK_K)[None, :] < k_left, other=0.0)
        b = tl.load(b_ptrs, mask=tl.arange(0, BLOCK_K)[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * SPLIT_K * stride_ak
        b_ptrs += BLOCK_K * SPLIT_K * stride_bk
    if SCALED:
        acc = acc * tl.load(scale_a_ptr) * tl.load(scale_b_ptr)

    c_ptrs = c_ptr + split * stride_cs + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    config: Mapping[str, int],
    *,
    out_dtype: torch.dtype,
    tf32: bool = False,
    scale_a: torch.Tensor | None = None,
    scale_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """``a @ b`` with one tile config. With SPLIT_K > 1 each split writes an fp32 partial product and a
    sum over the splits (part of the call, so part of its time) makes the output."""
    M, K = a.shape
    N = b.shape[1]
    split_k = int(config.get("SPLIT_K", 1))
    c = torch.empty((split_k, M, N), device=a.device, dtype=out_dtype if split_k == 1 else torch.float32)
    scales = (scale_a, scale_b) if scale_a is not None else (c, c)  # unread unless SCALED: any pointer will do
    grid = _grid(M, N, config)
    matmul_kernel[grid](a, b, c, *scales, M, N, K, *a.stride(), *b.stride(), *c.stride(), **_meta(config, a, tf32))
    if split_k == 1:
        return c[0]
    return c.sum(dim=0).to(out_dtype)


def warmup(
    M: int,
    N: int,
    K: int,
    dtype: torch.dtype,
    out_dtype: torch.dtype,
    config: Mapping[str, int],
    *,
    tf32: bool,
    scaled: bool,
) -> None:
    """Compile, without running, what ``matmul(x, w.t(), ...)`` launches for a contiguous x [M, K] and
    w [N, K]: Triton's ``warmup`` takes dtypes for tensors, and its cache then serves the timed process."""
    split_k = int(config.get("SPLIT_K", 1))
    c_dtype = out_dtype if split_k == 1 else torch.float32
    scales = (torch.float32, torch.float32) if scaled else (c_dtype, c_dtype)
    strides = (K, 1, 1, K, M * N, N, 1)  # x; w.t(); c [split, M, N]
    matmul_kernel.warmup(
        dtype, dtype, c_dtype, *scales, M, N, K, *strides, grid=_grid(M, N, config), **_meta(config, dtype, tf32)
    )


def _grid(M: int, N: int, config: Mapping[str, int]) -> tuple[int, int]:
    return triton.cdiv(M, config["BLOCK_M"]) * triton.cdiv(N, config["BLOCK_N"]), int(config.get("SPLIT_K", 1))


def _meta(config: Mapping[str, int], a: torch.Tensor | torch.dtype, tf32: bool) -> dict[str, object]:
    dtype = a if isinstance(a, torch.dtype) else a.dtype
    return {
        "BLOCK_M": config["BLOCK_M"],
        "BLOCK_N": config["BLOCK_N"],
        "BLOCK_K": config["BLOCK_K"],
        "GROUP_M": config["GROUP_M"],
        "SPLIT_K": int(config.get("SPLIT_K", 1)),
        "SCALED": dtype == torch.float8_e4m3fn,
        "INPUT_PRECISION": "tf32" if tf32 or dtype != torch.float32 else "ieee",
        "num_warps": config["num_warps"],
        "num_stages": config["num_stages"],
    }
