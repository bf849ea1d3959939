"""The Triton matmul: correct under Triton's interpreter, compiles for sm_80/sm_90 within its shared-memory
estimate, and its constraints prune by device before anything compiles."""

from __future__ import annotations

import pytest
import torch
from cotune.kernels.gpu import TOLERANCE, quantize_fp8
from cotune.kernels.triton_matmul import TritonMatmul, smem_estimate
from cotune.tuner.device.profiles import recorded_profile
from cotune.tuner.measure.kernel import BenchSettings, CandidateError
from cotune.tuner.types import Config, FailureKind, Precision, Problem

from tests.aot import compile_in_subprocess

H100 = recorded_profile("NVIDIA H100 80GB HBM3")
A100 = recorded_profile("NVIDIA A100-SXM4-80GB")
SMALL = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2, "num_warps": 4, "num_stages": 2}

# the tutorial's autotune list, the space file's seeds
TUTORIAL = [c.values for _, c in TritonMatmul().space().seeds]


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max())


# The Triton 3.9 interpreter reads bf16 inputs wrongly (a bf16 tl.dot returns ~1e11), so bf16 is covered by
# the sm_80/sm_90 compile test and on a GPU, not here.
@pytest.mark.parametrize("split_k", [1, 2])
@pytest.mark.parametrize("precision", [Precision.FP32, Precision.FP16, Precision.FP8])
def test_matches_torch_under_the_interpreter(precision: Precision, split_k: int) -> None:
    from cotune.kernels.triton_jit.matmul import matmul

    gen = torch.Generator().manual_seed(0)
    m, n, k = 33, 48, 80  # none a multiple of the blocks: masks and the wrapped row index are exercised
    x, w = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    cfg = {**SMALL, "SPLIT_K": split_k}
    if precision is Precision.FP8:
        (qx, sx), (qw, sw) = quantize_fp8(x), quantize_fp8(w)
        out = matmul(qx, qw.t(), cfg, out_dtype=torch.bfloat16, scale_a=sx, scale_b=sw)
        ref = (qx.double() * sx.double()) @ (qw.double() * sw.double()).t()
    elif precision is Precision.FP16:
        out = matmul(x.half(), w.half().t(), cfg, out_dtype=torch.float16)
        ref = x.half().double() @ w.half().double().t()
    else:
        out = matmul(x, w.t(), cfg, out_dtype=torch.float32)
        ref = x.double() @ w.double().t()
    assert out.shape == (m, n)
    assert _rel_err(out, ref) <= TOLERANCE[precision]


def test_a_wrong_tile_would_be_caught() -> None:
    """The check is not vacuous: dropping the last K block (what a bad mask does) exceeds the tolerance."""
    from cotune.kernels.triton_jit.matmul import matmul

    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(32, 80, generator=gen), torch.randn(32, 80, generator=gen)
    out = matmul(x[:, :64].contiguous(), w[:, :64].t(), {**SMALL, "SPLIT_K": 1}, out_dtype=torch.float32)
    assert _rel_err(out, x.double() @ w.double().t()) > TOLERANCE[Precision.FP32]


_COMPILE = """
import json
from cotune.kernels.triton_jit.aot import compile_for
from cotune.kernels.triton_jit.matmul import matmul_kernel
ints = ["M", "N", "K", "stride_am", "stride_bn", "stride_cs", "stride_cm"]
units = {"stride_ak": 1, "stride_bk": 1, "stride_cn": 1}
out = []
for cc, dt, odt, cfg in CASES:
    sig = {"a_ptr": "*" + dt, "b_ptr": "*" + dt, "c_ptr": "*" + odt, "scale_a_ptr": "*fp32", "scale_b_ptr": "*fp32"}
    sig.update({i: "i32" for i in ints})
    consts = dict(units, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], GROUP_M=8,
                  SPLIT_K=1, SCALED=dt == "fp8e4nv", INPUT_PRECISION="ieee" if dt == "fp32" else "tf32")
    sig.update({c: "constexpr" for c in consts})
    r = compile_for(matmul_kernel, sig, consts, capability=cc, num_warps=cfg["num_warps"],
                    num_stages=cfg["num_stages"], aligned=tuple(k for k in sig if sig[k] != "constexpr"))
    out.append(r.shared_bytes)
print(json.dumps(out))
"""

_TRITON_TYPE = {Precision.FP16: ("fp16", "fp16"), Precision.BF16: ("bf16", "bf16"), Precision.FP8: ("fp8e4nv", "bf16")}


def test_compiles_for_sm80_and_sm90_within_the_shared_memory_estimate() -> None:
    picks = [TUTORIAL[i] for i in (0, 3, 6, 9)]
    cases = [
        (cc, p, cfg)
        for cc, precisions in ((90, (Precision.BF16, Precision.FP8)), (80, (Precision.FP16,)))
        for p in precisions
        for cfg in picks
    ]
    literal = [(cc, *_TRITON_TYPE[p], cfg) for cc, p, cfg in cases]
    shared = compile_in_subprocess(f"CASES = {literal!r}\n{_COMPILE}")
    for (cc, p, cfg), real in zip(cases, shared, strict=True):
        est = smem_estimate(Config.make(cfg), p)
        # never below what the compiler allocates (a config the device rejects must not pass), at most one
        # pipeline stage above it (sm_80 keeps num_stages - 1 buffers)
        assert real <= est <= real * cfg["num_stages"] / max(cfg["num_stages"] - 1, 1) + 1, (cc, p, cfg, real, est)


def test_constraints_prune_by_device_with_reasons() -> None:
    space = TritonMatmul().space()
    fp8 = Problem.make("triton_matmul", {"M": 128, "N": 8192, "K": 8192}, "fp8")
    ok = Config.make({**TUTORIAL[0]})
    assert space.violation(ok, fp8, H100) is None
    reason = space.violation(ok, fp8, A100)
    assert reason and "fp8" in reason and "8.0" in reason

    bf16 = Problem.make("triton_matmul", {"M": 4096, "N": 8192, "K": 8192}, "bf16")
    # 4 stages x (128x64 + 64x256) x 2 B = 192 KiB: fits the H100's 227 KiB, not the A100's 163 KiB
    big = Config.make({**TUTORIAL[0], "num_stages": 4})
    assert space.violation(big, bf16, H100) is None
    reason = space.violation(big, bf16, A100)
    assert reason and "shared memory" in reason

    decode = Problem.make("triton_matmul", {"M": 16, "N": 8192, "K": 8192}, "bf16")
    reason = space.violation(Config.make({**TUTORIAL[0]}), decode, H100)
    assert reason and "BLOCK_M 128" in reason
    assert 0 < len(space.feasible_points(decode, H100)) < len(space.feasible_points(bf16, H100))


def test_measure_without_a_gpu_is_a_clear_failure() -> None:
    problem = Problem.make("triton_matmul", {"M": 16, "N": 32, "K": 32}, "fp16")
    with pytest.raises(CandidateError) as exc:
        TritonMatmul().measure(problem, Config.make({**SMALL, "SPLIT_K": 1}), H100, BenchSettings())
    assert exc.value.kind is FailureKind.RUNTIME
    assert "NVIDIA GPU" in str(exc.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp8"])
def test_measures_on_a_gpu(precision: str) -> None:
    from cotune.tuner.device.profiles import detect

    device = detect("cuda")
    if precision == "fp8" and not device.supports_fp8:
        pytest.skip("fp8 needs compute capability 8.9+")
    problem = Problem.make("triton_matmul", {"M": 256, "N": 512, "K": 1024}, precision)
    m = TritonMatmul().measure(problem, Config.make(TUTORIAL[3]), device, BenchSettings(repeats=10))
    assert m.median_s > 0 and m.max_rel_error <= TOLERANCE[Precision(precision)]


def test_configs_of_one_program_key_measure_alike_on_the_h100() -> None:
    """program_key's claim, checked against the GPU: in the two clean H100 recordings of M=16 (all 2,688 and
    2,976 configs measured with the stopwatch's head start), the configs it groups as one program measure a
    median under 1.2 % apart (timing noise), while a key that wrongly ignored num_warps groups configs that
    differ by several per cent."""
    import statistics
    from pathlib import Path

    from cotune.tuner.search.replay import load_recording

    kernel = TritonMatmul()
    recordings = Path(__file__).parents[1] / "bench" / "results" / "replay_h100"

    def median_spread(data, key) -> tuple[int, float]:
        groups: dict[str, list[float]] = {}
        for point, record in data.records.items():
            if record.time_ms is not None:
                groups.setdefault(key(Config.make(dict(zip(data.keys, point, strict=True)))), []).append(record.time_ms)
        return len(groups), statistics.median(max(g) / min(g) for g in groups.values() if len(g) > 1)

    for precision, programs in (("bf16", 672), ("fp8", 744)):
        data = load_recording(recordings / f"triton_matmul_{precision}_K8192_M16_N8192_nvidia-h100-80gb-hbm3.json.gz")
        problem = Problem.make("triton_matmul", {"M": 16, "N": 8192, "K": 8192}, precision)
        groups, spread = median_spread(data, lambda c, p=problem: kernel.program_key(p, c))
        assert groups == programs and spread < 1.012  # the 4 GROUP_M values of one program
    _, wrong = median_spread(data, lambda c: Config.make({**c.values, "num_warps": 0}).key)
    assert wrong > 1.03
