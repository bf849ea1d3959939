"""Every variant of the fused-MoE GEMM (each dtype, the w1 and the w2 launch) compiles for sm_90, and for sm_80
where the dtype exists there, on this CPU; the shared memory the compiler allocates never exceeds the
estimate that prunes the space, and the estimate is at most twice it."""

from __future__ import annotations

import pytest
from cotune.kernels.fused_moe import launch_block_k, smem_bytes
from cotune.tuner.types import Config, Problem

from tests.aot import compile_in_subprocess

# Compiled in a subprocess without the interpreter. The launch arguments real layers pass as multiples of
# 16 (pointers from torch, N, K and the row strides) are declared so, as the JIT specialises on them;
# unit strides are constants, as the JIT makes them. ``mode`` is SCALES (0 none, 1 per tensor, 2 block).
_COMPILE = """
import json
from cotune.kernels.triton_jit.aot import compile_for
from cotune.kernels.triton_jit.fused_moe import moe_gemm_kernel
PTRS = ["a_ptr", "b_ptr", "c_ptr", "sorted_token_ids_ptr", "expert_ids_ptr", "num_tokens_post_padded_ptr"]
DIMS = ["N", "K", "stride_am", "stride_be", "stride_bn", "stride_cm"]
out = []
for cc, dt, odt, mode, gemm, cfg in CASES:
    sig = {"a_ptr": "*" + dt, "b_ptr": "*" + dt, "c_ptr": "*" + odt}
    sig.update({p: "*i32" for p in PTRS[3:]})
    sig.update({d: "i32" for d in DIMS + ["EM", "num_valid_tokens", "stride_asm", "stride_bse", "stride_bsn"]})
    consts = {"stride_ak": 1, "stride_bk": 1, "stride_cn": 1, "top_k": 2 if gemm == 1 else 1,
              "MUL_ROUTED_WEIGHT": gemm == 2, "SCALES": mode, "GROUP_N": 128 if mode == 2 else 0,
              "GROUP_K": 128 if mode == 2 else 0}
    consts.update({k: cfg[k] for k in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M")})
    aligned = PTRS + DIMS
    if mode == 0:
        consts.update({"a_scale_ptr": None, "b_scale_ptr": None})  # the launcher passes None: a constexpr
    else:
        sig.update({"a_scale_ptr": "*fp32", "b_scale_ptr": "*fp32"})
        aligned += ["a_scale_ptr", "b_scale_ptr"]
    if mode == 2:
        consts.update({"stride_ask": 1, "stride_bsk": 1})
    else:
        sig.update({"stride_ask": "i32", "stride_bsk": "i32"})
    if gemm == 2:  # the w2 launch applies the routing weights
        sig["topk_weights_ptr"] = "*fp32"
        aligned += ["topk_weights_ptr"]
    else:
        consts["topk_weights_ptr"] = None
    sig.update({c: "constexpr" for c in consts})
    r = compile_for(moe_gemm_kernel, sig, consts, capability=cc, num_warps=cfg["num_warps"],
                    num_stages=cfg["num_stages"], aligned=tuple(aligned))
    out.append(r.shared_bytes)
print(json.dumps(out))
"""

_TRITON_TYPES = {  # input type, output type, SCALES
    "fp16": ("fp16", "fp16", 0),
    "bf16": ("bf16", "bf16", 0),
    "fp8": ("fp8e4nv", "bf16", 1),
    "fp8_block128": ("fp8e4nv", "bf16", 2),
}
_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
SMALL = dict(zip(_KEYS, (16, 128, 128, 1, 4, 3), strict=True))  # a 16-row tile pipelines one stage less
LARGE = dict(zip(_KEYS, (128, 256, 256, 32, 8, 3), strict=True))  # BLOCK_SIZE_K 256: launched as 128 when blocked
MORE = [
    dict(zip(_KEYS, v, strict=True))
    for v in ((64, 128, 256, 16, 4, 4), (32, 64, 64, 1, 4, 5), (256, 128, 64, 64, 8, 2), (64, 256, 128, 16, 8, 4))
]
TARGETS = ((90, ("fp16", "bf16", "fp8", "fp8_block128")), (80, ("fp16", "bf16")))  # no fp8 before sm_89


def _check(configs_by_gemm: dict[int, list[dict[str, int]]]) -> None:
    cases = []
    for cc, precisions in TARGETS:
        for precision in precisions:
            problem = Problem.make("fused_moe", {"M": 16, "E": 8, "H": 4096, "I": 1024, "topk": 2}, precision)
            for gemm, configs in configs_by_gemm.items():
                for cfg in configs:
                    if precision == "fp8_block128" and (cfg["BLOCK_SIZE_N"] % 128 or cfg["BLOCK_SIZE_K"] % 128):
                        continue  # outside the block path's space
                    launched = {**cfg, "BLOCK_SIZE_K": launch_block_k(cfg["BLOCK_SIZE_K"], problem.dtype)}
                    cases.append((cc, precision, gemm, cfg, launched, problem))
    literal = [(cc, *_TRITON_TYPES[p], gemm, launched) for cc, p, gemm, _, launched, _ in cases]
    shared = compile_in_subprocess(f"CASES = {literal!r}\n{_COMPILE}", timeout=900)
    for (cc, precision, gemm, cfg, _, problem), real in zip(cases, shared, strict=True):
        est = smem_bytes(Config.make(cfg), problem)
        # never below what the compiler allocates (a config the device rejects must not pass); at most twice
        # it (sm_80 keeps num_stages - 1 buffers; a 16-row tile is pipelined one stage less)
        assert real <= est <= 2 * real, (cc, precision, gemm, cfg, real, est)


def test_every_variant_compiles_within_the_shared_memory_estimate() -> None:
    """One compile per variant (a cold Triton cache takes seconds each): the small tile for w1, the large one
    for w2."""
    _check({1: [SMALL], 2: [LARGE]})


@pytest.mark.slow
def test_more_configs_compile_within_the_shared_memory_estimate() -> None:
    _check({1: [LARGE, *MORE], 2: [SMALL, *MORE]})
