"""``triton_attention``: a flash-attention forward pass in Triton (:mod:`cotune.kernels.triton_jit.attention`), tuned
over its query and key block sizes, warps and software-pipeline stages, verified against torch's
``scaled_dot_product_attention`` in fp32.

Problems are ``[batch, heads, seq, head_dim]`` attention with ``causal`` 0 or 1. Nothing here imports Triton
at module level, so the registry and the CPU-only tuner can load this class without it.
"""

from __future__ import annotations

from pathlib import Path

from cotune.kernels.gpu import cuda_device, make_operand, measure_on_gpu, triton_toolchain
from cotune.kernels.gpu_constraints import precision_supported, smem_fits, threads_fit
from cotune.tuner.measure.kernel import BenchSettings, Kernel
from cotune.tuner.types import Config, DeviceProfile, Measurement, Precision, Problem

JIT_SOURCE = Path(__file__).with_name("triton_jit") / "attention.py"
HEAD_DIMS = (16, 32, 64, 128, 256)  # tl.arange needs a power of two; tl.dot needs at least 16
MIN_BLOCK = 16  # tl.dot's smallest tile


def smem_estimate(config: Config, problem: Problem, device: DeviceProfile) -> int:
    """Bytes of shared memory the compiled kernel asks for, from a model of what Triton 3.9 allocates.

    Fitted to about 600 AOT compiles for sm_80 and sm_90 (head_dim 16..256, every block size, 2/4/8 warps,
    1..4 stages) and checked in tests/test_triton_attention.py:

    - the Q tile, an MMA operand, is staged in shared memory;
    - the software pipeline holds K and V tiles for ``num_stages`` iterations where Hopper's warpgroup MMA
      runs (16-bit inputs, BLOCK_M >= 64, whole warpgroups), else ``num_stages - 1`` (one unpipelined);
    - outside wgmma, P (the probabilities) goes through shared memory on its way to the second dot when
      the loop is pipelined and the head is wider than the query block; fp32, whose IEEE dot runs on CUDA
      cores, always stages P and also keeps a word per row and warp for the row max and sum.

    In those compiles it was never below the compiler's figure (a config the device rejects would pass)
    and pruned no config that fits; it is at most one K/V stage and the P tile above.
    """
    bm, bn, stages = int(config["BLOCK_M"]), int(config["BLOCK_N"]), int(config["num_stages"])
    warps = int(config["num_warps"])
    d = problem.dims["head_dim"]
    fp32 = problem.dtype is Precision.FP32
    wgmma = _warpgroup_mma(bm, warps, fp32, device)
    kv_stages = stages if wgmma else max(stages - 1, 1)
    p_tile = bm * bn if fp32 or (d > bm and stages > 1 and not wgmma) else 0
    scratch = 4 * bm * warps if fp32 else 0
    return problem.dtype.itemsize * (bm * d + kv_stages * 2 * bn * d + p_tile) + scratch


def _warpgroup_mma(block_m: int, warps: int, fp32: bool, device: DeviceProfile) -> bool:
    """Whether Triton lowers the dots to Hopper's wgmma (64-row tiles per 4-warp group); an unknown device
    counts as one that does, the larger estimate."""
    cc = device.compute_capability
    hopper_or_later = cc is None or tuple(cc) >= (9, 0)
    return hopper_or_later and not fp32 and block_m >= 64 and warps % 4 == 0


def _attention_smem_fits(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    return smem_fits(smem_estimate(config, problem, device), device)


def _head_dim_supported(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    d = problem.dims["head_dim"]
    return None if d in HEAD_DIMS else f"head_dim {d} is not one of {', '.join(map(str, HEAD_DIMS))}"


def _causal_shape(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    """Causal attention is only defined here for square score matrices: with seq_q != seq_k, torch's
    ``is_causal`` aligns the mask top-left and FlashAttention bottom-right, and silently picking one would
    tune a kernel that disagrees with half of its callers."""
    d = problem.dims
    if d["causal"] not in (0, 1):
        return f"causal must be 0 or 1, got {d['causal']}"
    if d["causal"] and d["seq_q"] != d["seq_k"]:
        return f"causal attention needs seq_q == seq_k (got {d['seq_q']} and {d['seq_k']})"
    return None


def _covering_block(seq: int) -> int:
    """The smallest block that covers ``seq`` rows: a larger one only computes padding."""
    return max(MIN_BLOCK, 1 << max(seq - 1, 0).bit_length())


def _blocks_within_seq(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    d = problem.dims
    for param, dim in (("BLOCK_M", "seq_q"), ("BLOCK_N", "seq_k")):
        block, cover = int(config[param]), _covering_block(d[dim])
        if block > cover:
            return f"{param} {block} > {cover}, the smallest block covering {dim} {d[dim]}"
    return None


class TritonAttention(Kernel):
    name = "triton_attention"
    description = "flash-attention forward in Triton (query/key blocks, warps, pipeline stages)"
    shape_dims = ("batch", "heads", "seq_q", "seq_k", "head_dim", "causal")
    flag_dims = ("causal",)
    batch_dim = "batch"
    precisions = (Precision.FP16, Precision.BF16, Precision.FP32)
    device_kinds = ("cuda",)
    predicates = {
        "threads_fit": threads_fit,
        "precision_supported": precision_supported,
        "attention_smem_fits": _attention_smem_fits,
        "head_dim_supported": _head_dim_supported,
        "causal_shape": _causal_shape,
        "blocks_within_seq": _blocks_within_seq,
    }

    def flops(self, problem: Problem) -> float:
        """Two matmuls of 2 * sq * sk * d each per (batch, head); causal skips half the scores."""
        d = problem.dims
        total = 4.0 * d["batch"] * d["heads"] * d["seq_q"] * d["seq_k"] * d["head_dim"]
        return total / 2 if d["causal"] else total

    def bytes_moved(self, problem: Problem) -> float:
        """Q, K and V read once and O written once: the traffic a fused kernel cannot avoid."""
        d = problem.dims
        rows = 2 * d["seq_q"] + 2 * d["seq_k"]
        return float(problem.dtype.itemsize * d["batch"] * d["heads"] * rows * d["head_dim"])

    def source_files(self) -> tuple[Path, ...]:
        return (JIT_SOURCE, Path(__file__))

    def toolchain(self) -> dict[str, str]:
        return triton_toolchain()

    precompiles = True

    def precompile(self, problem: Problem, config: Config, device: DeviceProfile) -> None:
        cuda_device()  # Triton compiles for the GPU this process sees
        from cotune.kernels.gpu import compile_failure, input_dtype
        from cotune.kernels.triton_jit import attention as jit

        d = problem.dims
        try:
            jit.warmup(
                d["seq_q"], d["seq_k"], d["head_dim"], input_dtype(problem.dtype), causal=bool(d["causal"]),
                **{k: int(config[k]) for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")},
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - every compiler error is this config's COMPILE failure
            raise compile_failure(exc) from exc

    def measure(self, problem: Problem, config: Config, device: DeviceProfile, bench: BenchSettings) -> Measurement:
        import torch

        gpu = cuda_device()
        from cotune.kernels.triton_jit import attention as jit  # imports Triton: only in the candidate process

        d = problem.dims
        causal = bool(d["causal"])
        q_shape = (d["batch"], d["heads"], d["seq_q"], d["head_dim"])
        kv_shape = (d["batch"], d["heads"], d["seq_k"], d["head_dim"])
        q = make_operand(q_shape, problem.dtype, gpu, seed=0)
        k = make_operand(kv_shape, problem.dtype, gpu, seed=1)
        v = make_operand(kv_shape, problem.dtype, gpu, seed=2)
        # From the rounded inputs, so a 16-bit run is held to its own rounding, not to its inputs'. torch's
        # fp32 SDPA on sm_80+ is the memory-efficient kernel with 3xTF32 products: fp32-accurate.
        with torch.no_grad():
            reference = torch.nn.functional.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), is_causal=causal
            )

        def call() -> torch.Tensor:
            return jit.attention(
                q,
                k,
                v,
                causal=causal,
                BLOCK_M=int(config["BLOCK_M"]),
                BLOCK_N=int(config["BLOCK_N"]),
                num_warps=int(config["num_warps"]),
                num_stages=int(config["num_stages"]),
            )

        return measure_on_gpu(
            call,
            reference,
            kernel=self,
            problem=problem,
            device=device,
            bench=bench,
        )
