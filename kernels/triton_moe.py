"""``triton_moe``: the fused MoE grouped GEMM that vLLM and SGLang tune (vLLM's ``fused_moe_kernel``).

A problem is one MoE layer's first GEMM (w1, the gate_up projection): ``M`` tokens of hidden size ``K``,
each routed to ``topk`` of ``E`` experts whose weights are ``[N, K]`` (N = 2 x intermediate size per
tensor-parallel rank), giving ``C [M, topk, N]``. The tuned parameters are vLLM's: the three block sizes,
GROUP_SIZE_M, num_warps and num_stages. The Triton code lives in :mod:`cotune.kernels.triton_jit.moe`, imported
only inside :meth:`TritonMoE.measure` so this class loads without Triton or a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cotune.kernels.gpu import (
    cuda_device,
    input_dtype,
    make_operand,
    measure_on_gpu,
    quantize_fp8,
    triton_toolchain,
)
from cotune.kernels.gpu_constraints import precision_supported, smem_fits, threads_fit
from cotune.tuner.measure.kernel import BenchSettings, Kernel
from cotune.tuner.types import Config, DeviceProfile, Measurement, Precision, Problem

if TYPE_CHECKING:
    import torch

HERE = Path(__file__).resolve().parent
ROUTING_SEED = 0
A_SEED = 1
B_SEED = 2  # expert e uses B_SEED + e


def moe_smem_bytes(config: Config, problem: Problem) -> int:
    """Shared memory of the software pipeline: ``num_stages`` buffers of one A and one B tile.

    Triton 3.9 never allocates more (checked against compiled kernels in tests/test_triton_moe.py): on sm_90
    exactly this, except that a 16-row A tile is pipelined one stage less; on sm_80 ``num_stages - 1``
    buffers. So a config this rejects would not fit, and one it accepts wastes at most half of the budget.
    """
    bm, bn, bk = (int(config[p]) for p in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K"))
    return int(config["num_stages"]) * (bm * bk + bk * bn) * problem.dtype.itemsize


def moe_smem_fits(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    return smem_fits(moe_smem_bytes(config, problem), device)


@dataclass(frozen=True)
class MoEInputs:
    """One problem's operands: ``a [M, K]``, ``b [E, N, K]`` and the routing; scales only for fp8."""

    a: torch.Tensor
    b: torch.Tensor
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    a_scale: torch.Tensor | None = None
    b_scale: torch.Tensor | None = None


def make_inputs(problem: Problem, device: torch.device) -> MoEInputs:
    """Seeded operands on ``device`` (CUDA to measure, CPU for the interpreter tests).

    B is generated one expert at a time so that no fp32 copy of all experts (tens of GB for DeepSeek-size
    layers) ever exists; fp8 weights get one scale per expert, activations one per tensor, as in vLLM.
    """
    import torch
    from cotune.kernels.triton_jit.moe import route

    d = problem.dims
    m, e, n, k = d["M"], d["E"], d["N"], d["K"]
    weights, ids = route(m, e, d["topk"], device=device, seed=ROUTING_SEED)
    a = make_operand((m, k), problem.dtype, device, A_SEED)
    b = torch.empty(e, n, k, dtype=input_dtype(problem.dtype), device=device)
    if problem.dtype is not Precision.FP8:
        for expert in range(e):
            b[expert] = make_operand((n, k), problem.dtype, device, B_SEED + expert)
        return MoEInputs(a, b, ids, weights)
    b_scale = torch.empty(e, dtype=torch.float32, device=device)
    for expert in range(e):
        q, scale = quantize_fp8(make_operand((n, k), problem.dtype, device, B_SEED + expert))
        b[expert] = q
        b_scale[expert] = scale[0]
    qa, a_scale = quantize_fp8(a)
    return MoEInputs(qa, b, ids, weights, a_scale, b_scale)


class TritonMoE(Kernel):
    name = "triton_moe"
    description = "fused MoE grouped GEMM in Triton (vLLM's fused_moe_kernel), gate_up projection"
    shape_dims = ("M", "E", "N", "K", "topk")
    batch_dim = "M"
    precisions = (Precision.FP16, Precision.BF16, Precision.FP8)
    device_kinds = ("cuda",)
    predicates = {
        "threads_fit": threads_fit,
        "precision_supported": precision_supported,
        "moe_smem_fits": moe_smem_fits,
    }

    def flops(self, problem: Problem) -> float:
        d = problem.dims
        return 2.0 * d["M"] * d["topk"] * d["N"] * d["K"]

    def bytes_moved(self, problem: Problem) -> float:
        """Weights of the experts hit (at most one per routed token slot), activations in, output out."""
        d = problem.dims
        size = problem.dtype.itemsize
        out_size = 2  # fp16/bf16 write their own type; fp8 writes bf16
        experts_hit = min(d["E"], d["M"] * d["topk"])
        weights = experts_hit * d["N"] * d["K"] * size
        return float(weights + d["M"] * d["K"] * size + d["M"] * d["topk"] * d["N"] * out_size)

    def source_files(self) -> tuple[Path, ...]:
        # triton_jit/__init__.py sets TRITON_DEFAULT_FP_FUSION, which changes the generated code.
        return (Path(__file__), HERE / "triton_jit" / "moe.py", HERE / "triton_jit" / "__init__.py")

    def toolchain(self) -> dict[str, str]:
        return triton_toolchain()

    def measure(self, problem: Problem, config: Config, device: DeviceProfile, bench: BenchSettings) -> Measurement:
        """Time one launch of the w1 (gate_up) grouped GEMM, checked against an fp32 per-expert reference.

        The block alignment (vLLM's moe_align_block_size) and the output allocation happen once, before
        timing: they are not tuned, and a real MoE layer shares one alignment between its two GEMMs.
        """
        gpu = cuda_device()  # first, so a machine without a GPU fails fast and says why

        from cotune.kernels.triton_jit import moe

        inputs = make_inputs(problem, gpu)
        topk = problem.dims["topk"]
        ref = moe.reference(inputs.a, inputs.b, inputs.topk_ids, a_scale=inputs.a_scale, b_scale=inputs.b_scale)
        c = moe.output_for(inputs.a, inputs.b.shape[1], topk)
        alignment = moe.align_block_size(inputs.topk_ids, int(config["BLOCK_SIZE_M"]), inputs.b.shape[0])
        grid, args, kwargs = moe.moe_kernel_args(
            inputs.a, inputs.b, c, alignment, topk, config.values, a_scale=inputs.a_scale, b_scale=inputs.b_scale
        )

        def call() -> torch.Tensor:
            moe.launch(grid, args, kwargs)
            return c

        return measure_on_gpu(
            call,
            ref,
            kernel=self,
            problem=problem,
            device=device,
            bench=bench,
        )
