"""The Triton flash-attention forward: correct under Triton's interpreter, compiles for sm_80/sm_90 within its
shared-memory estimate, and its constraints prune by device and shape before anything compiles."""

from __future__ import annotations

import pytest
import torch
from cotune.kernels.gpu import TOLERANCE
from cotune.kernels.triton_attention import TritonAttention, smem_estimate
from cotune.tuner.device.profiles import recorded_profile
from cotune.tuner.measure.kernel import BenchSettings, CandidateError
from cotune.tuner.types import Config, FailureKind, Precision, Problem

from tests.aot import compile_in_subprocess

H100 = recorded_profile("NVIDIA H100 80GB HBM3")
A100 = recorded_profile("NVIDIA A100-SXM4-80GB")
SMALL = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 2}
DTYPES = {Precision.FP32: torch.float32, Precision.FP16: torch.float16}


def _problem(dtype: str = "fp16", **dims: int) -> Problem:
    shape = {"batch": 1, "heads": 2, "seq_q": 64, "seq_k": 64, "head_dim": 64, "causal": 0, **dims}
    return Problem.make("triton_attention", shape, dtype)


def _inputs(batch: int, heads: int, seq_q: int, seq_k: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(batch, heads, s, head_dim, generator=gen) for s in (seq_q, seq_k, seq_k))


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max())


def _run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, **blocks: int) -> torch.Tensor:
    from cotune.kernels.triton_jit.attention import attention

    return attention(q, k, v, causal=causal, **{**SMALL, **blocks})


# (batch, heads, seq_q, seq_k, head_dim, causal): 40 is no multiple of the 16-blocks, so the tail masks run;
# seq_q != seq_k only without the causal mask, which the kernel defines for square scores only.
SHAPES = [
    *((2, 2, 40, 40, 16, causal) for causal in (0, 1)),
    *((1, 2, 64, 64, 32, causal) for causal in (0, 1)),
    (1, 2, 40, 64, 16, 0),
    (1, 2, 64, 40, 32, 0),
]


# The Triton 3.9 interpreter reads bf16 inputs wrongly (a bf16 tl.dot returns ~1e11), so bf16 is covered by
# the sm_80/sm_90 compile test and on a GPU, not here.
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])) + ("-causal" if s[5] else ""))
@pytest.mark.parametrize("precision", list(DTYPES))
def test_matches_torch_sdpa_under_the_interpreter(precision: Precision, shape: tuple[int, ...]) -> None:
    *dims, causal = shape
    q, k, v = _inputs(*dims)
    dtype = DTYPES[precision]
    out = _run(q.to(dtype), k.to(dtype), v.to(dtype), bool(causal))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
    assert out.dtype == dtype and out.shape == ref.shape
    assert _rel_err(out, ref) <= TOLERANCE[precision]


@pytest.mark.parametrize(("block_m", "block_n"), [(32, 16), (16, 32)])
def test_causal_with_unequal_blocks(block_m: int, block_n: int) -> None:
    """The diagonal falls inside a key block (or spans query blocks): the mask must still be exact."""
    q, k, v = _inputs(1, 2, 72, 72, 16)
    out = _run(q, k, v, True, BLOCK_M=block_m, BLOCK_N=block_n)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert _rel_err(out, ref) <= TOLERANCE[Precision.FP32]


def test_the_check_is_not_vacuous() -> None:
    """Leaving out the causal mask is far outside the tolerance, so a masking bug cannot pass."""
    q, k, v = _inputs(1, 2, 40, 40, 16)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert _rel_err(_run(q, k, v, False), ref) > 100 * TOLERANCE[Precision.FP32]


def test_launcher_rejects_causal_with_unequal_seqs() -> None:
    q, k, v = _inputs(1, 1, 16, 32, 16)
    with pytest.raises(ValueError, match="seq_q == seq_k"):
        _run(q, k, v, True)


_COMPILE = """
import json
from cotune.kernels.triton_jit.aot import compile_for
from cotune.kernels.triton_jit.attention import attention_fwd
out = []
for cc, dt, head_dim, causal, cfg in CASES:
    sig = {p: "*" + dt for p in ("q_ptr", "k_ptr", "v_ptr", "o_ptr")}
    sig.update(seq_q="i32", seq_k="i32", qk_scale="fp32")
    consts = dict(HEAD_DIM=head_dim, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], CAUSAL=causal,
                  DOT_PRECISION="tf32")
    sig.update({c: "constexpr" for c in consts})
    r = compile_for(attention_fwd, sig, consts, capability=cc, num_warps=cfg["num_warps"],
                    num_stages=cfg["num_stages"], aligned=("q_ptr", "k_ptr", "v_ptr", "o_ptr", "seq_q", "seq_k"))
    out.append(r.shared_bytes)
print(json.dumps(out))
"""

# (head_dim, causal, config): Triton's tutorial shape (128 x 64 blocks, 4 warps, 3 stages), a wide
# head with deep pipelining, a small decode-like tile with 2 warps, and 8 warps on 128-row blocks.
AOT_CASES = [
    (64, True, {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}),
    (128, False, {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 4}),
    (32, False, {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 2, "num_stages": 1}),
    (64, True, {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2}),
]


def test_compiles_for_sm80_and_sm90_within_the_shared_memory_estimate() -> None:
    devices = {80: A100, 90: H100}
    cases = [
        (cc, precision, head_dim, causal, cfg)
        for cc in devices
        for precision in (Precision.FP16, Precision.BF16)
        for head_dim, causal, cfg in AOT_CASES
    ]
    literal = [(cc, p.value, d, causal, cfg) for cc, p, d, causal, cfg in cases]
    shared = compile_in_subprocess(f"CASES = {literal!r}\n{_COMPILE}")
    for (cc, precision, head_dim, causal, cfg), real in zip(cases, shared, strict=True):
        problem = _problem(precision.value, head_dim=head_dim, causal=int(causal))
        est = smem_estimate(Config.make(cfg), problem, devices[cc])
        # Never below what the compiler allocates (a config the device rejects must not pass); above it by at
        # most one K/V pipeline stage, the P tile and the reduction scratch, or it would prune configs that fit.
        bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
        slack = precision.itemsize * (2 * bn * head_dim + bm * bn) + 4 * bm * cfg["num_warps"]
        assert real <= est <= real + slack, (cc, precision, head_dim, cfg, real, est)


def test_space_loads_with_every_predicate() -> None:
    space = TritonAttention().space()
    assert space.size == 4 * 4 * 3 * 4
    problem = _problem(seq_q=2048, seq_k=2048, head_dim=256)
    on_a100 = {c.key for c in space.feasible_points(problem, A100)}
    on_h100 = {c.key for c in space.feasible_points(problem, H100)}
    assert 0 < len(on_a100) < space.size
    assert on_h100 - on_a100  # the H100's 227 KiB admit deeper pipelines than the A100's 163 KiB


def test_shared_memory_prunes_by_device() -> None:
    space = TritonAttention().space()
    problem = _problem(seq_q=4096, seq_k=4096, head_dim=256)
    # Q 128x256 and K/V 32x256 tiles: three K/V stages and P 128x32 on Ampere (168 KiB > 163 KiB), four
    # stages with P in registers under Hopper's wgmma (192 KiB <= 227 KiB)
    big = Config.make({"BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 8, "num_stages": 4})
    assert space.violation(big, problem, H100) is None
    reason = space.violation(big, problem, A100)
    assert reason and "attention_smem_fits" in reason and "shared memory" in reason


def test_shape_constraints_have_reasons() -> None:
    space = TritonAttention().space()
    ok = Config.make({"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2})
    assert space.violation(ok, _problem(causal=1), H100) is None

    reason = space.violation(ok, _problem(seq_q=64, seq_k=128, causal=1), H100)
    assert reason and "causal" in reason and "seq_q == seq_k" in reason
    assert space.violation(ok, _problem(seq_q=64, seq_k=128, causal=0), H100) is None

    reason = space.violation(ok, _problem(head_dim=96), H100)
    assert reason and "head_dim 96" in reason

    decode = _problem(seq_q=1, seq_k=4096)
    reason = space.violation(ok, decode, H100)
    assert reason and "BLOCK_M 64" in reason and "seq_q 1" in reason
    feasible = space.feasible_points(decode, H100)
    assert feasible and {int(c["BLOCK_M"]) for c in feasible} == {16}


def test_flops_halve_for_causal() -> None:
    kernel = TritonAttention()
    dense, causal = _problem(), _problem(causal=1)
    assert kernel.flops(dense) == 4.0 * 1 * 2 * 64 * 64 * 64
    assert kernel.flops(causal) == kernel.flops(dense) / 2
    assert kernel.bytes_moved(dense) == kernel.bytes_moved(causal) == 2 * 1 * 2 * 4 * 64 * 64


def test_measure_without_a_gpu_is_a_clear_failure() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(CandidateError) as exc:
        TritonAttention().measure(_problem(), Config.make(SMALL), H100, BenchSettings())
    assert exc.value.kind is FailureKind.RUNTIME
    assert "NVIDIA GPU" in str(exc.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_measures_on_a_gpu(precision: str, causal: int) -> None:
    from cotune.tuner.device.profiles import detect

    device = detect("cuda")
    if precision == "bf16" and device.compute_capability and tuple(device.compute_capability) < (8, 0):
        pytest.skip("bf16 needs compute capability 8.0+")
    problem = _problem(precision, batch=2, heads=4, seq_q=300, seq_k=300, causal=causal)
    config = Config.make({"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2})
    assert TritonAttention().space().violation(config, problem, device) is None
    m = TritonAttention().measure(problem, config, device, BenchSettings(repeats=10))
    assert m.median_s > 0 and m.max_rel_error <= TOLERANCE[Precision(precision)]
