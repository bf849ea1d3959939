"""Triton matmul ``C = A @ B`` in three variants (``config["KERNEL"]``), each with grouped program order,
optional split-K, and per-tensor scales for fp8 inputs:

- ``tutorial`` (also a config without ``KERNEL``): the structure of Triton's matmul tutorial, one program
  per output tile, pointer loads;
- ``persistent_tma``: one program per SM that walks the tiles, A and B loaded by the tensor memory
  accelerator through tensor descriptors (Hopper's ``cp.async.bulk.tensor``), the output stored the same
  way; the tile loop is flattened into the K loop so the next tile's loads overlap this one's epilogue;
- ``persistent_tma_ws``: the same with Triton's automatic warp specialisation (a producer warp group
  issues the loads, consumer warp groups the ``wgmma``s). Triton 3.6 and 3.9 specialise this loop for
  sm_90 only with 64-row tiles, at most 128 columns and 4 warps (they add 8 consumer warps); other shapes
  fail to compile or run unspecialised, which ``kernels/triton_matmul.py``'s constraints rule out.

A is [M, K]; B is [K, N] (a linear layer passes ``W.t()`` of a [N, K] weight): any strides for the
tutorial, K-contiguous A and W for the TMA variants. fp32 runs as IEEE fp32 and tf32 as tf32 tensor-core
math; fp16/bf16/fp8 accumulate in fp32. fp8 writes bf16 after multiplying by ``scale_a * scale_b``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import triton
import triton.language as tl
from cotune.kernels.triton_matmul import PERSISTENT_TMA_WS, TUTORIAL, variant


@triton.jit
def _tile(tile, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """(row, column) of output tile ``tile`` in grouped order: GROUP_M row-blocks share each column-block of B
    while it is still in L2. With GROUP_M at or above the number of row-blocks, the order is column-major."""
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (tile // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((tile % num_pid_in_group) % group_size_m)
    pid_n = (tile % num_pid_in_group) // group_size_m
    return pid_m, pid_n


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
    split = tl.program_id(1)
    pid_m, pid_n = _tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

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


@triton.jit
def persistent_kernel(
    a_desc,
    b_desc,
    c_desc,
    c_ptr,
    scale_a_ptr,
    scale_b_ptr,
    M,
    N,
    K,
    stride_cs,
    stride_cm,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr,
    SCALED: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    NUM_SMS: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
):
    """Each program walks units ``program_id, program_id + NUM_SMS, ...``; a unit is one output tile of one
    K split. Loads beyond M, N or K read zeros (the descriptors pad), so no masks; the descriptor store
    clips at M and N. A split writes its fp32 partial product to ``c_ptr[split]`` with masked stores."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    k_steps = tl.cdiv(K, BLOCK_K * SPLIT_K)
    # Hopper's warp specialisation needs the tile loop kept apart from the K loop; without it, flattening
    # the two lets the pipeliner start the next tile's loads during this tile's epilogue.
    for unit in tl.range(
        tl.program_id(0), num_tiles * SPLIT_K, NUM_SMS, flatten=not WARP_SPECIALIZE, warp_specialize=WARP_SPECIALIZE
    ):
        split = unit // num_tiles
        pid_m, pid_n = _tile(unit % num_tiles, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(k_steps):
            off_k = (k * SPLIT_K + split) * BLOCK_K
            a = a_desc.load([off_m, off_k])
            b = b_desc.load([off_n, off_k])
            acc = tl.dot(a, b.T, acc, input_precision=INPUT_PRECISION)
        if SCALED:
            acc = acc * tl.load(scale_a_ptr) * tl.load(scale_b_ptr)
        if SPLIT_K == 1:
            c_desc.store([off_m, off_n], acc.to(c_desc.dtype))
        else:
            offs_m = off_m + tl.arange(0, BLOCK_M)
            offs_n = off_n + tl.arange(0, BLOCK_N)
            c_ptrs = c_ptr + split * stride_cs + offs_m[:, None] * stride_cm + offs_n[None, :]
            tl.store(c_ptrs, acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    config: Mapping[str, int | str],
    *,
    out_dtype: torch.dtype,
    tf32: bool = False,
    scale_a: torch.Tensor | None = None,
    scale_b: torch.Tensor | None = None,
    num_sms: int | None = None,
) -> torch.Tensor:
    """``a @ b`` with one config. With SPLIT_K > 1 each split writes an fp32 partial product and a sum over
    the splits (part of the call, so part of its time) makes the output. ``num_sms``: programs of a
    persistent variant (default: the current GPU's SMs)."""
    M, K = a.shape
    N = b.shape[1]
    split_k = int(config.get("SPLIT_K", 1))
    c = torch.empty((split_k, M, N), device=a.device, dtype=out_dtype if split_k == 1 else torch.float32)
    scales = (scale_a, scale_b) if scale_a is not None else (c, c)  # unread unless SCALED: any pointer will do
    if variant(config) == TUTORIAL:
        grid = _grid(M, N, config)
        meta = _meta(config, a, tf32)
        matmul_kernel[grid](a, b, c, *scales, M, N, K, *a.stride(), *b.stride(), *c.stride(), **meta)
    else:
        from triton.tools.tensor_descriptor import TensorDescriptor

        w = b.t()
        if a.stride(1) != 1 or w.stride(1) != 1:
            raise ValueError(f"{variant(config)} needs K-contiguous A [M, K] and W [N, K] (b = W.t())")
        bm, bn, bk = (int(config[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
        descs = (
            TensorDescriptor.from_tensor(a, [bm, bk]),
            TensorDescriptor.from_tensor(w, [bn, bk]),
            TensorDescriptor.from_tensor(c[0], [bm, bn]),  # the descriptor store of SPLIT_K == 1 only
        )
        sms = num_sms or torch.cuda.get_device_properties(a.device).multi_processor_count
        grid = _persistent_grid(M, N, config, sms)
        meta = _persistent_meta(config, a.dtype, tf32, sms)
        persistent_kernel[grid](*descs, c, *scales, M, N, K, c.stride(0), c.stride(1), **meta)
    if split_k == 1:
        return c[0]
    return c.sum(dim=0).to(out_dtype)


def warmup(
    M: int,
    N: int,
    K: int,
    dtype: torch.dtype,
    out_dtype: torch.dtype,
    config: Mapping[str, int | str],
    *,
    tf32: bool,
    scaled: bool,
    num_sms: int,
) -> object:
    """Compile, without running, what ``matmul(x, w.t(), ...)`` launches for a contiguous x [M, K] and
    w [N, K]: Triton's ``warmup`` takes dtypes for tensors (and descriptors over dtype-only stand-ins), and
    its cache then serves the timed process. Returns Triton's compiled kernel."""
    split_k = int(config.get("SPLIT_K", 1))
    c_dtype = out_dtype if split_k == 1 else torch.float32
    scales = (torch.float32, torch.float32) if scaled else (c_dtype, c_dtype)
    if variant(config) == TUTORIAL:
        strides = (K, 1, 1, K, M * N, N, 1)  # x; w.t(); c [split, M, N]
        return matmul_kernel.warmup(
            dtype, dtype, c_dtype, *scales, M, N, K, *strides, grid=_grid(M, N, config), **_meta(config, dtype, tf32)
        )
    from triton.runtime.jit import MockTensor
    from triton.tools.tensor_descriptor import TensorDescriptor

    def desc(t: torch.dtype, rows: int, cols: int, block: list[int]) -> TensorDescriptor:
        return TensorDescriptor(MockTensor(t, [rows, cols]), [rows, cols], [cols, 1], block)

    bm, bn, bk = (int(config[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    descs = (desc(dtype, M, K, [bm, bk]), desc(dtype, N, K, [bn, bk]), desc(c_dtype, M, N, [bm, bn]))
    return persistent_kernel.warmup(
        *descs,
        c_dtype,
        *scales,
        M,
        N,
        K,
        M * N,
        N,
        grid=_persistent_grid(M, N, config, num_sms),
        **_persistent_meta(config, dtype, tf32, num_sms),
    )


def _grid(M: int, N: int, config: Mapping[str, int | str]) -> tuple[int, int]:
    tiles = triton.cdiv(M, int(config["BLOCK_M"])) * triton.cdiv(N, int(config["BLOCK_N"]))
    return tiles, int(config.get("SPLIT_K", 1))


def _persistent_grid(M: int, N: int, config: Mapping[str, int | str], num_sms: int) -> tuple[int]:
    tiles, split_k = _grid(M, N, config)
    return (min(num_sms, tiles * split_k),)


def _meta(config: Mapping[str, int | str], a: torch.Tensor | torch.dtype, tf32: bool) -> dict[str, object]:
    dtype = a if isinstance(a, torch.dtype) else a.dtype
    return {
        "BLOCK_M": int(config["BLOCK_M"]),
        "BLOCK_N": int(config["BLOCK_N"]),
        "BLOCK_K": int(config["BLOCK_K"]),
        "GROUP_M": int(config["GROUP_M"]),
        "SPLIT_K": int(config.get("SPLIT_K", 1)),
        "SCALED": dtype == torch.float8_e4m3fn,
        "INPUT_PRECISION": "tf32" if tf32 or dtype != torch.float32 else "ieee",
        "num_warps": int(config["num_warps"]),
        "num_stages": int(config["num_stages"]),
    }


def _persistent_meta(
    config: Mapping[str, int | str], dtype: torch.dtype, tf32: bool, num_sms: int
) -> dict[str, object]:
    return {**_meta(config, dtype, tf32), "NUM_SMS": num_sms, "WARP_SPECIALIZE": variant(config) == PERSISTENT_TMA_WS}
