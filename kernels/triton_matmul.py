"""``triton_matmul``: a tiled Triton matmul ``y = x @ W^T`` (a linear layer: x [M, K], W [N, K]) over the
kernel variant (``KERNEL``: the tutorial's structure, or a persistent TMA kernel with or without warp
specialisation, see kernels/triton_jit/matmul.py), BLOCK_M/N/K, GROUP_M, SPLIT_K, num_warps and
num_stages, in fp32, tf32, fp16, bf16 and fp8 (e4m3 inputs with per-tensor scales, fp32 accumulate, bf16
out), checked against torch and timed on the GPU."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from cotune.kernels.gemm import GemmKernel
from cotune.kernels.gpu import (
    cuda_device,
    input_dtype,
    make_operand,
    measure_on_gpu,
    output_dtype,
    quantize_fp8,
    triton_toolchain,
)
from cotune.kernels.gpu_constraints import precision_supported, smem_fits, threads_fit
from cotune.tuner.measure.kernel import BenchSettings
from cotune.tuner.types import Config, DeviceProfile, Measurement, ParamValue, Precision, Problem

JIT_SOURCE = Path(__file__).with_name("triton_jit") / "matmul.py"


# the kernel variants, the values of a config's KERNEL (kernels/triton_jit/matmul.py has the code of each)
TUTORIAL, PERSISTENT_TMA, PERSISTENT_TMA_WS = "tutorial", "persistent_tma", "persistent_tma_ws"
TMA_VARIANTS = (PERSISTENT_TMA, PERSISTENT_TMA_WS)
# fp16/bf16/fp8 reach Hopper's wgmma through the descriptors; IEEE fp32 and tf32 stay with the tutorial
TMA_PRECISIONS = (Precision.FP16, Precision.BF16, Precision.FP8)
BARRIER_BYTES = 1024  # mbarriers and alignment beside the buffers; the compiled kernels used at most 264


def variant(config: Config | Mapping[str, ParamValue]) -> str:
    """The config's kernel variant; a config without ``KERNEL`` (recordings made before it) is the tutorial."""
    values = config.values if isinstance(config, Config) else config
    return str(values.get("KERNEL", TUTORIAL))


def smem_estimate(config: Config, precision: Precision) -> int:
    """Shared memory of the software pipeline (one A and one B tile per stage) and, for the TMA variants, of
    the output tile the epilogue stores (fp32 for a split-K partial product) plus barriers.

    Checked against Triton 3.9's compiled kernels for sm_80 and sm_90 (tests/test_triton_matmul.py). The
    tutorial kernel gets ``num_stages`` (Hopper) or ``num_stages - 1`` (Ampere) load buffers, so its
    estimate is exact or up to a stage too high, never low. The flattened persistent loop gets at most one
    output buffer, the warp-specialised one two (one per consumer warp group); both get one load buffer
    fewer when the tile is too small for wgmma, so their estimates are never low and at most a stage and
    an output tile high.
    """
    bm, bn, bk, stages = (int(config[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_stages"))
    loads = stages * (bm * bk + bk * bn) * precision.itemsize
    kind = variant(config)
    if kind == TUTORIAL:
        return loads
    out_bytes = 4 if int(config["SPLIT_K"]) > 1 else (2 if precision is Precision.FP8 else precision.itemsize)
    outputs = 2 if kind == PERSISTENT_TMA_WS else 1
    return loads + outputs * bm * bn * out_bytes + BARRIER_BYTES


def _smem_fits(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    return smem_fits(smem_estimate(config, problem.dtype), device)


def _fp8_block_k(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    """fp8 tensor-core MMAs consume K in steps of 32."""
    if problem.dtype is Precision.FP8 and int(config["BLOCK_K"]) < 32:
        return f"fp8 needs BLOCK_K >= 32, got {config['BLOCK_K']}"
    return None


def _variant_supported(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    """The TMA variants need Hopper's tensor memory accelerator and a tensor-core input type."""
    kind = variant(config)
    if kind not in TMA_VARIANTS:
        return None
    cc = device.compute_capability
    if cc is not None and tuple(cc) < (9, 0):
        return f"{kind} needs compute capability 9.0 or newer (TMA); {device.name} is {cc[0]}.{cc[1]}"
    if problem.dtype not in TMA_PRECISIONS:
        return f"{kind} runs fp16, bf16 and fp8, not {problem.dtype.value}"
    return None


def _tma_aligned(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    """A tensor descriptor's row stride must be a multiple of 16 bytes: K for x and W, N for the output."""
    if variant(config) not in TMA_VARIANTS:
        return None
    d, p = problem.dims, problem.dtype
    out_bytes = 4 if int(config["SPLIT_K"]) > 1 else (2 if p is Precision.FP8 else p.itemsize)
    if d["K"] * p.itemsize % 16:
        return f"K={d['K']} rows of {d['K'] * p.itemsize} bytes are not a multiple of 16 (TMA)"
    if d["N"] * out_bytes % 16:
        return f"N={d['N']} output rows of {d['N'] * out_bytes} bytes are not a multiple of 16 (TMA)"
    return None


def _warp_specialisable(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    """Triton (3.6 and 3.9, compiled for sm_90) specialises the persistent loop's warps only for 64-row tiles
    of at most 128 columns with 4 warps; 128-row tiles fail in its pass, 8 warps run unspecialised."""
    if variant(config) != PERSISTENT_TMA_WS:
        return None
    bm, bn, warps = int(config["BLOCK_M"]), int(config["BLOCK_N"]), int(config["num_warps"])
    if bm != 64 or bn > 128 or warps != 4:
        return f"warp specialisation needs BLOCK_M 64, BLOCK_N <= 128, num_warps 4; got {bm}, {bn}, {warps}"
    return None


def _blocks_fit_problem(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    """A block beyond the problem's next power of two computes only padding; a split needs K to work on."""
    d = problem.dims
    bm, bk, split = int(config["BLOCK_M"]), int(config["BLOCK_K"]), int(config["SPLIT_K"])
    m_cover = max(16, 1 << (d["M"] - 1).bit_length())
    if bm > m_cover:
        return f"BLOCK_M {bm} > {m_cover}, the smallest power of two >= M={d['M']}"
    if bk * split > max(d["K"], bk):
        return f"BLOCK_K x SPLIT_K = {bk * split} > K={d['K']}"
    return None


def sm_count() -> int:
    """SMs of the current GPU: the persistent variants launch one program each (a compile-time constant, so
    the precompile and the timed process must agree on it)."""
    import torch

    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count


class TritonMatmul(GemmKernel):
    name = "triton_matmul"
    description = "Triton tiled matmul x @ W^T (tiles, group order, split-K, warps, stages; fp32..fp8)"
    precisions = (Precision.FP32, Precision.TF32, Precision.FP16, Precision.BF16, Precision.FP8)
    device_kinds = ("cuda",)
    predicates = {
        "threads_fit": threads_fit,
        "precision_supported": precision_supported,
        "smem_fits": _smem_fits,
        "fp8_block_k": _fp8_block_k,
        "blocks_fit_problem": _blocks_fit_problem,
        "variant_supported": _variant_supported,
        "tma_aligned": _tma_aligned,
        "warp_specialisable": _warp_specialisable,
    }

    def output_bytes(self, precision: Precision) -> int:
        return 2 if precision is Precision.FP8 else precision.itemsize  # fp8 writes bf16

    def program_key(self, problem: Problem, config: Config) -> str:
        """GROUP_M groups the grid's ceil(M / BLOCK_M) rows of programs; every GROUP_M at or above that row
        count gives the same program order (kernels/triton_jit/matmul.py, group_size_m), so at a decode
        batch (M=16, one row) the four GROUP_M values are one program. On the H100 recordings such twins
        measure a median 0.8 % apart, the timing noise (bench/results/replay_h100/README.md). The persistent
        variants walk their tiles in the same grouped order (``_tile``), so the rule holds for them too."""
        rows = math.ceil(problem.dims["M"] / int(config["BLOCK_M"]))
        if int(config["GROUP_M"]) <= rows:
            return config.key
        return Config.make({**config.values, "GROUP_M": rows}).key

    def source_files(self) -> tuple[Path, ...]:
        return (Path(__file__), JIT_SOURCE)

    def toolchain(self) -> dict[str, str]:
        return triton_toolchain()

    precompiles = True

    def precompile(self, problem: Problem, config: Config, device: DeviceProfile) -> None:
        cuda_device()  # Triton compiles for the GPU this process sees
        from cotune.kernels.gpu import compile_failure
        from cotune.kernels.triton_jit.matmul import warmup

        d, p = problem.dims, problem.dtype
        try:
            warmup(
                d["M"], d["N"], d["K"], input_dtype(p), output_dtype(p), config.values,
                tf32=p is Precision.TF32, scaled=p is Precision.FP8, num_sms=sm_count(),
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - every compiler error is this config's COMPILE failure
            raise compile_failure(exc) from exc

    def measure(self, problem: Problem, config: Config, device: DeviceProfile, bench: BenchSettings) -> Measurement:
        dev = cuda_device()  # before importing Triton: no GPU is a clear failure, not a driver error
        import torch
        from cotune.kernels.triton_jit.matmul import matmul

        d = problem.dims
        p = problem.dtype
        x32 = make_operand((d["M"], d["K"]), Precision.FP32, dev, seed=0)
        w32 = make_operand((d["N"], d["K"]), Precision.FP32, dev, seed=1)
        fp32_reference = x32 @ w32.t()  # torch keeps tf32 off for fp32 matmuls by default
        scales: dict[str, torch.Tensor] = {}
        if p is Precision.FP8:
            (x, sx), (w, sw) = quantize_fp8(x32), quantize_fp8(w32)
            scales = {"scale_a": sx, "scale_b": sw}
            reference = (x.float() * sx) @ (w.float() * sw).t()
        else:
            x, w = x32.to(input_dtype(p)), w32.to(input_dtype(p))
            reference = x.float() @ w.float().t()
        params = config.values
        out = output_dtype(p)
        tf32 = p is Precision.TF32
        sms = sm_count()

        def call() -> torch.Tensor:
            return matmul(x, w.t(), params, out_dtype=out, tf32=tf32, num_sms=sms, **scales)

        return measure_on_gpu(
            call,
            reference,
            kernel=self,
            problem=problem,
            device=device,
            bench=bench,
            fp32_reference=fp32_reference,
        )
