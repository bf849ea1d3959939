"""``fused_moe``: one MoE layer at M tokens exactly as vLLM's ``fused_experts`` runs it, one config for both
of its grouped GEMMs, timed as one call: what vLLM's and SGLang's tuned config files are for.

A problem is ``M`` tokens of hidden size ``H`` routed to ``topk`` of ``E`` local experts (E per rank under
expert parallelism) whose intermediate size per rank is ``I`` (I per rank under tensor parallelism): w1
``[E, 2I, H]``, w2 ``[E, H, I]``. The call routes (softmax top-k, renormalised), aligns the (token, slot)
pairs to BLOCK_SIZE_M, runs the w1 grouped GEMM, SiLU-and-mul, the w2 grouped GEMM with the routing
weights, and sums the slots (:mod:`cotune.kernels.triton_jit.fused_moe`). The tuned parameters are vLLM's
benchmark_moe grid (search_spaces/fused_moe.yaml); :meth:`FusedMoE.baselines` gives vLLM's default config and
the entry of the file vLLM ships for the shape, where one is vendored (kernels/fused_moe_configs/).

On a CUDA device the layer is compiled and timed on the GPU. On the CPU it runs under Triton's interpreter
(numpy), so that plan -> tune -> export can run end to end on tiny shapes without a GPU: such a result is
checked like any other, but its timings say nothing about any GPU.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from cotune.kernels.fused_moe_configs import vllm_default, vllm_shipped
from cotune.kernels.gpu import (
    TOLERANCE,
    compile_failure,
    cuda_device,
    make_operand,
    measure_on_gpu,
    quantize_fp8,
    triton_toolchain,
)
from cotune.kernels.gpu_constraints import precision_supported, smem_fits, threads_fit
from cotune.tuner.measure.kernel import BenchSettings, CandidateError, Kernel
from cotune.tuner.types import Config, DeviceProfile, FailureKind, Measurement, Precision, Problem

if TYPE_CHECKING:
    import torch
    from cotune.kernels.triton_jit.fused_moe import ExpertWeights

HERE = Path(__file__).resolve().parent
X_SEED, ROUTER_SEED = 0, 1
W1_SEED, W2_SEED = 1_000, 2_000  # expert e's weights use seed + e
BLOCK = 128  # fp8_block128's quantisation block
CPU_TIMING_NOTE = (
    "fused_moe on the CPU runs under Triton's interpreter (numpy): its results are checked, but its timings "
    "say nothing about any GPU; tune on a GPU for serving configs"
)


def launch_block_k(block_k: int, precision: Precision) -> int:
    """BLOCK_SIZE_K as launched: the block path applies one activation and one weight scale per K step, so
    vLLM's ``invoke_fused_moe_kernel`` caps it at the 128 block there."""
    return min(block_k, BLOCK) if precision is Precision.FP8_BLOCK128 else block_k


def smem_bytes(config: Config, problem: Problem) -> int:
    """Shared memory of the software pipeline: ``num_stages`` buffers of one A and one B tile (e4m3 for both
    fp8 paths, whose activations are quantised before the GEMM), plus the block path's per-step scales.

    Never below what Triton 3.9 allocates for either GEMM of the layer, and at most twice it (checked against
    compiled kernels for sm_80 and sm_90 in tests/test_fused_moe_compile.py): sm_80 keeps ``num_stages - 1``
    buffers, and a 16-row tile is pipelined one stage less.
    """
    bm, bn = int(config["BLOCK_SIZE_M"]), int(config["BLOCK_SIZE_N"])
    bk, stages = launch_block_k(int(config["BLOCK_SIZE_K"]), problem.dtype), int(config["num_stages"])
    tiles = stages * (bm * bk + bk * bn) * problem.dtype.itemsize
    scales = stages * (bm + bn) * 4 if problem.dtype is Precision.FP8_BLOCK128 else 0
    return tiles + scales


def _smem_fits(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    return smem_fits(smem_bytes(config, problem), device)


def _block128_shape_error(problem: Problem) -> str | None:
    """vLLM quantises the block path's activations in groups of 128 along H (w1) and I (w2)."""
    if problem.dtype is Precision.FP8_BLOCK128:
        for dim in ("H", "I"):
            if problem.dims[dim] % BLOCK:
                return f"fp8_block128 needs {dim} divisible by {BLOCK} (activations are quantised in groups of {BLOCK})"
    return None


def _block128_fits(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    """The block-quantised path's rules: its shape (:func:`_block128_shape_error`), and vLLM's benchmark_moe
    keeps only configs whose BLOCK_SIZE_N and BLOCK_SIZE_K are multiples of the [128, 128] block
    (``get_configs_compute_bound``: ``BLOCK_SIZE_K % block_k`` and ``BLOCK_SIZE_N % block_n`` must be 0)."""
    if problem.dtype is not Precision.FP8_BLOCK128:
        return None
    for param in ("BLOCK_SIZE_N", "BLOCK_SIZE_K"):
        if int(config[param]) % BLOCK:
            return f"fp8_block128 needs {param} a multiple of {BLOCK} (vLLM's benchmark_moe rule), got {config[param]}"
    return _block128_shape_error(problem)


def problem_error(problem: Problem) -> str | None:
    """Why a problem cannot run with any config, as one line; None when it can."""
    d = problem.dims
    if d["topk"] > d["E"]:
        return f"topk={d['topk']} > E={d['E']}: a token is routed to topk distinct experts"
    return _block128_shape_error(problem)


def _grid_rows(problem: Problem, block_m: int) -> int:
    """M-blocks in the grid of either GEMM of the layer (vLLM's sizing; see ``gemm_launch``)."""
    d = problem.dims
    numel = d["M"] * d["topk"]
    capacity = numel + d["E"] * (block_m - 1)
    em = 0
    for a_rows, top_k in ((d["M"], d["topk"]), (numel, 1)):  # w1 reads x [M, H]; w2 one row per slot
        em = max(em, min(capacity, a_rows * top_k * block_m) if a_rows < block_m else capacity)
    return math.ceil(em / block_m)


@dataclass(frozen=True)
class MoEInputs:
    """One problem's operands: activations, router logits and the expert weights as the kernel takes them."""

    x: torch.Tensor
    logits: torch.Tensor
    weights: ExpertWeights
    topk: int


def _w1(problem: Problem, expert: int, device: torch.device) -> torch.Tensor:
    """Expert ``expert``'s fp32 w1 ``[2I, H]``, scaled as an initialised layer is (outputs of order one)."""
    d = problem.dims
    return make_operand((2 * d["I"], d["H"]), Precision.FP32, device, W1_SEED + expert) / math.sqrt(d["H"])


def _w2(problem: Problem, expert: int, device: torch.device) -> torch.Tensor:
    d = problem.dims
    return make_operand((d["H"], d["I"]), Precision.FP32, device, W2_SEED + expert) / math.sqrt(d["I"])


def act_dtype(precision: Precision) -> torch.dtype:
    """The layer's activation type: fp16 for fp16, else bf16 (the fp8 paths serve bf16 models)."""
    import torch

    return torch.float16 if precision is Precision.FP16 else torch.bfloat16


def make_inputs(problem: Problem, device: torch.device) -> MoEInputs:
    """Seeded operands on ``device``. Weights are made one expert at a time, so no fp32 copy of all experts
    exists; fp8 weights get one scale per expert (fp8) or per 128 x 128 block (fp8_block128). The fp8
    path's static activation scales are calibrated on this batch, as a static-scale checkpoint is."""
    import torch
    from cotune.kernels.triton_jit.fused_moe import ExpertWeights
    from cotune.kernels.triton_jit.fused_moe_ops import FP8, quantize_blocks, reference_intermediate

    d, p = problem.dims, problem.dtype
    e, h, inter = d["E"], d["H"], d["I"]
    act = act_dtype(p)
    x = make_operand((d["M"], h), Precision.FP32, device, X_SEED).to(act)
    logits = make_operand((d["M"], e), Precision.FP32, device, ROUTER_SEED)
    if not p.is_fp8:
        w1 = torch.empty(e, 2 * inter, h, dtype=act, device=device)
        w2 = torch.empty(e, h, inter, dtype=act, device=device)
        for expert in range(e):
            w1[expert], w2[expert] = _w1(problem, expert, device), _w2(problem, expert, device)
        return MoEInputs(x, logits, ExpertWeights(p, w1, w2), d["topk"])

    w1 = torch.empty(e, 2 * inter, h, dtype=FP8, device=device)
    w2 = torch.empty(e, h, inter, dtype=FP8, device=device)
    if p is Precision.FP8:
        s1 = torch.empty(e, dtype=torch.float32, device=device)
        s2 = torch.empty(e, dtype=torch.float32, device=device)
        quantize = quantize_fp8
    else:
        s1 = torch.empty(e, 2 * inter // BLOCK, h // BLOCK, dtype=torch.float32, device=device)
        s2 = torch.empty(e, h // BLOCK, inter // BLOCK, dtype=torch.float32, device=device)
        quantize = quantize_blocks
    for expert in range(e):
        (w1[expert], s1[expert]), (w2[expert], s2[expert]) = (
            quantize(_w1(problem, expert, device)),
            quantize(_w2(problem, expert, device)),
        )
    weights = ExpertWeights(p, w1, w2, s1, s2)
    if p is Precision.FP8:
        from cotune.kernels.triton_jit.fused_moe_ops import route

        a1_scale = (x.float().abs().amax() / 448.0).clamp(min=1e-12).reshape(1)
        weights = ExpertWeights(p, w1, w2, s1, s2, a1_scale, a1_scale)
        _, ids = route(logits, d["topk"])
        act1 = reference_intermediate(
            x, ids, _dequantized(weights, 1), quant_a1=_act_quant(weights, 1), stored=torch.bfloat16
        )
        a2_scale = (act1.abs().amax() / 448.0).clamp(min=1e-12).reshape(1)
        weights = ExpertWeights(p, w1, w2, s1, s2, a1_scale, a2_scale)
    return MoEInputs(x, logits, weights, d["topk"])


def _dequantized(weights: ExpertWeights, which: int):  # noqa: ANN202 - a per-expert fp32 weight getter
    from cotune.kernels.triton_jit.fused_moe_ops import dequantize_blocks

    w = weights.w1 if which == 1 else weights.w2
    s = weights.w1_scale if which == 1 else weights.w2_scale
    if weights.precision is Precision.FP8:
        return lambda e: w[e].float() * s[e]
    if weights.precision is Precision.FP8_BLOCK128:
        return lambda e: dequantize_blocks(w[e], s[e])
    return lambda e: w[e].float()


def _act_quant(weights: ExpertWeights, which: int):  # noqa: ANN202 - activation [T, K] -> fp32 as multiplied
    """The activation as the GEMM multiplies it: quantised the way the layer quantises it, then widened."""
    from cotune.kernels.triton_jit.fused_moe_ops import FP8, FP8_MAX, dequantize_groups, quantize_groups

    if weights.precision is Precision.FP8:
        scale = weights.a1_scale if which == 1 else weights.a2_scale
        return lambda t: (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).float() * scale
    if weights.precision is Precision.FP8_BLOCK128:
        return lambda t: dequantize_groups(*quantize_groups(t))
    return lambda t: t.float()


def references(problem: Problem, inputs: MoEInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(reference, fp32 reference), both ``[M, H]`` fp32.

    The reference is computed in fp32 from the kernel's own inputs: its (quantised) weights and activations
    and, on the fp8 paths, the intermediate activation stored and quantised as the layer stores and
    quantises it, so the check sees only accumulation order and output rounding. The fp32 reference uses
    the unquantised fp32 weights and no intermediate rounding: the error a job's accuracy bound is held to.
    """
    import torch
    from cotune.kernels.triton_jit.fused_moe_ops import reference_intermediate, reference_output, route

    w, dev = inputs.weights, inputs.x.device
    topk_weights, ids = route(inputs.logits, inputs.topk)
    stored = torch.bfloat16 if problem.dtype.is_fp8 else None
    act = reference_intermediate(inputs.x, ids, _dequantized(w, 1), quant_a1=_act_quant(w, 1), stored=stored)
    ref = reference_output(act, ids, topk_weights, _dequantized(w, 2), quant_a2=_act_quant(w, 2))
    plain = lambda t: t.float()  # noqa: E731
    act32 = reference_intermediate(inputs.x, ids, lambda e: _w1(problem, e, dev), quant_a1=plain, stored=None)
    ref32 = reference_output(act32, ids, topk_weights, lambda e: _w2(problem, e, dev), quant_a2=plain)
    return ref, ref32


@lru_cache(maxsize=1)
def prepared(problem: Problem, device: str) -> tuple[MoEInputs, torch.Tensor, torch.Tensor]:
    """(inputs, reference, fp32 reference) on ``device``, kept for the next config of the same problem: a
    candidate process measures many configs of one problem in a row, and for a real layer making the
    weights and the references costs more than timing a config. The layer never writes to them."""
    import torch

    inputs = make_inputs(problem, torch.device(device))
    return (inputs, *references(problem, inputs))


def _interpreted_layer() -> ModuleType:
    """The layer's module under Triton's interpreter; TRITON_INTERPRET is read when it is first imported."""
    os.environ["TRITON_INTERPRET"] = "1"
    from cotune.kernels import triton_jit
    from cotune.kernels.triton_jit import fused_moe as layer
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(layer.moe_gemm_kernel, InterpretedFunction):
        raise CandidateError(
            FailureKind.RUNTIME,
            "fused_moe on the CPU needs Triton's interpreter, but this process imported its Triton code for a "
            "GPU first (TRITON_INTERPRET was unset); measure CPU candidates in a fresh process",
        )
    triton_jit._interpret_bf16_dots_in_fp32()  # in case the package was imported before the variable was set
    return layer


@functools.cache
def _note_cpu_timings() -> None:
    """Say once per candidate process (on stderr, which the CLI shows) that CPU timings are the interpreter's."""
    print(f"note: {CPU_TIMING_NOTE}", file=sys.stderr, flush=True)


class FusedMoE(Kernel):
    name = "fused_moe"
    description = (
        "one MoE layer as vLLM's fused_experts runs it (routing, w1 and w2 grouped GEMMs with one config, "
        "SiLU-and-mul, weighted sum) in Triton; on a CPU it runs under Triton's interpreter, whose timings say "
        "nothing about a GPU"
    )
    shape_dims = ("M", "E", "H", "I", "topk")
    batch_dim = "M"
    precisions = (Precision.FP16, Precision.BF16, Precision.FP8, Precision.FP8_BLOCK128)
    device_kinds = ("cuda", "cpu")
    predicates = {
        "precision_supported": precision_supported,
        "block128_fits": _block128_fits,
        "threads_fit": threads_fit,
        "fused_moe_smem_fits": _smem_fits,
    }
    precompiles = True

    def flops(self, problem: Problem) -> float:
        """Both GEMMs: ``2 * M * topk * (2I * H + H * I)``; routing, SiLU and the sum are negligible."""
        d = problem.dims
        return 6.0 * d["M"] * d["topk"] * d["H"] * d["I"]

    def bytes_moved(self, problem: Problem) -> float:
        """The weights of the experts hit (at most one per (token, slot)), with their fp8 scales; x read and
        the output written; each intermediate (``[M, topk, 2I]``, ``[M * topk, I]``, ``[M, topk, H]``) written
        once and read once in the activation type. The e4m3 copies of the activations are not counted."""
        d = problem.dims
        act = 2  # fp16, or bf16 for bf16 and the fp8 paths
        experts_hit = min(d["E"], d["M"] * d["topk"])
        weights = 3 * d["I"] * d["H"] * problem.dtype.itemsize
        if problem.dtype is Precision.FP8_BLOCK128:
            weights += 3 * d["I"] * d["H"] // (BLOCK * BLOCK) * 4
        intermediates = d["M"] * d["topk"] * (3 * d["I"] + d["H"]) * act * 2
        return float(experts_hit * weights + 2 * d["M"] * d["H"] * act + intermediates)

    def program_key(self, problem: Problem, config: Config) -> str:
        """Configs that launch the same two programs share a key: GROUP_SIZE_M at or above the grid's M-block
        count orders the programs the same way (as for triton_matmul), and on the block path vLLM launches
        BLOCK_SIZE_K 256 as 128 (:func:`launch_block_k`)."""
        values = dict(config.values)
        values["BLOCK_SIZE_K"] = launch_block_k(int(config["BLOCK_SIZE_K"]), problem.dtype)
        rows = _grid_rows(problem, int(config["BLOCK_SIZE_M"]))
        values["GROUP_SIZE_M"] = min(int(config["GROUP_SIZE_M"]), rows)
        return Config.make(values).key

    def baselines(self, problem: Problem, device: DeviceProfile) -> dict[str, Config]:
        """``vllm_default``: the config vLLM runs without a tuned file (its ``get_default_config``);
        ``vllm_shipped``: the entry vLLM's nearest-M rule picks from the file it ships under this layer's name
        for this device, present only where that file is vendored in kernels/fused_moe_configs/."""
        out = {"vllm_default": vllm_default(problem)}
        shipped = vllm_shipped(problem, device.name)
        if shipped is not None:
            out["vllm_shipped"] = shipped
        return out

    def source_files(self) -> tuple[Path, ...]:
        jit = HERE / "triton_jit"
        # triton_jit/__init__.py sets TRITON_DEFAULT_FP_FUSION, which changes the generated code
        return (Path(__file__), jit / "fused_moe.py", jit / "fused_moe_ops.py", jit / "__init__.py")

    def toolchain(self) -> dict[str, str]:
        return triton_toolchain()

    def precompile(self, problem: Problem, config: Config, device: DeviceProfile) -> None:
        """Compile both GEMMs into Triton's on-disk cache by running the layer once on the problem's own inputs:
        Triton specialises a compile on integer arguments (a count that is 1 or a multiple of 16), so a
        smaller stand-in could compile programs the timed call never uses. Nothing on the CPU, where the
        interpreter compiles nothing."""
        if device.kind != "cuda":
            return
        gpu = cuda_device()
        from cotune.kernels.triton_jit.fused_moe import FusedMoELayer

        try:
            inputs, _, _ = prepared(problem, str(gpu))
            self._layer(FusedMoELayer, inputs, config)()
        except CandidateError:
            raise
        except Exception as exc:  # noqa: BLE001 - every compiler error is this config's COMPILE failure
            raise compile_failure(exc) from exc

    def measure(self, problem: Problem, config: Config, device: DeviceProfile, bench: BenchSettings) -> Measurement:
        """Time one fused-experts call (routing to the summed output) with ``config`` for both GEMMs, after
        checking it against :func:`references`. Any config the kernel can launch is accepted, in the space
        or not (a server's default need not be a grid point)."""
        reason = problem_error(problem)
        if reason:
            raise CandidateError(FailureKind.RUNTIME, f"fused_moe {problem.key}: {reason}")
        if device.kind == "cpu":
            return self._measure_interpreted(problem, config, bench)
        gpu = cuda_device()  # before importing Triton: no GPU is a clear failure, not a driver error
        from cotune.kernels.triton_jit.fused_moe import FusedMoELayer

        inputs, ref, ref32 = prepared(problem, str(gpu))
        layer = self._layer(FusedMoELayer, inputs, config)
        return measure_on_gpu(
            layer, ref, kernel=self, problem=problem, device=device, bench=bench, fp32_reference=ref32
        )

    @staticmethod
    def _layer(cls: type, inputs: MoEInputs, config: Config):  # noqa: ANN205 - a FusedMoELayer
        try:
            return cls(inputs.x, inputs.logits, inputs.weights, inputs.topk, config.values)
        except ValueError as exc:
            raise CandidateError(FailureKind.RUNTIME, f"fused_moe: {exc}") from None

    def _measure_interpreted(self, problem: Problem, config: Config, bench: BenchSettings) -> Measurement:
        from cotune.kernels.timing import time_calls
        from cotune.kernels.verify import check, max_rel_error

        layer_module = _interpreted_layer()
        _note_cpu_timings()
        inputs, ref, ref32 = prepared(problem, "cpu")
        layer = self._layer(layer_module.FusedMoELayer, inputs, config)
        try:
            out = layer().float().numpy()
        except Exception as exc:  # noqa: BLE001 - an interpreter error is this config's runtime failure
            raise CandidateError(FailureKind.RUNTIME, f"{type(exc).__name__}: {str(exc)[:400]}") from exc
        err = check(out, ref.numpy(), TOLERANCE[problem.dtype])
        times = time_calls(layer, warmup=bench.warmup, repeats=bench.repeats)
        return Measurement(
            times, self.flops(problem), self.bytes_moved(problem), err, 0.0, max_rel_error(out, ref32.numpy())
        )
