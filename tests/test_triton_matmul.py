"""The Triton matmul: every variant correct under Triton's interpreter, compiles for sm_80/sm_90 within its
shared-memory estimate (the TMA variants to Hopper's wgmma and bulk tensor copies), and its constraints
prune by device before anything compiles."""

from __future__ import annotations

import pytest
import torch
from cotune.kernels.gpu import TOLERANCE, quantize_fp8
from cotune.kernels.triton_matmul import (
    PERSISTENT_TMA,
    PERSISTENT_TMA_WS,
    TUTORIAL,
    TritonMatmul,
    smem_estimate,
    variant,
)
from cotune.tuner.device.profiles import recorded_profile
from cotune.tuner.measure.kernel import BenchSettings, CandidateError
from cotune.tuner.types import Config, FailureKind, Precision, Problem

from tests.aot import compile_in_subprocess

H100 = recorded_profile("NVIDIA H100 80GB HBM3")
A100 = recorded_profile("NVIDIA A100-SXM4-80GB")
SMALL = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2, "num_warps": 4, "num_stages": 2}

# the tutorial's autotune list, the space file's seeds of the tutorial variant
TUTORIAL_SEEDS = [c.values for _, c in TritonMatmul().space().seeds if variant(c) == TUTORIAL]


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
    picks = [TUTORIAL_SEEDS[i] for i in (0, 3, 6, 9)]
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


@pytest.mark.parametrize("kind", [PERSISTENT_TMA, PERSISTENT_TMA_WS])
@pytest.mark.parametrize("split_k", [1, 2])
@pytest.mark.parametrize("precision", [Precision.FP16, Precision.FP8])
def test_persistent_variants_match_torch_under_the_interpreter(kind: str, split_k: int, precision: Precision) -> None:
    """3 programs walk the 6 tiles x splits, so each program computes several; loads past M, N and K read the
    descriptors' zero padding (none of 33, 48, 80 is a multiple of the blocks)."""
    from cotune.kernels.triton_jit.matmul import matmul

    gen = torch.Generator().manual_seed(0)
    m, n, k = 33, 48, 80
    x, w = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    cfg = {**SMALL, "SPLIT_K": split_k, "KERNEL": kind}
    if precision is Precision.FP8:
        (qx, sx), (qw, sw) = quantize_fp8(x), quantize_fp8(w)
        out = matmul(qx, qw.t(), cfg, out_dtype=torch.bfloat16, scale_a=sx, scale_b=sw, num_sms=3)
        ref = (qx.double() * sx.double()) @ (qw.double() * sw.double()).t()
    else:
        out = matmul(x.half(), w.half().t(), cfg, out_dtype=torch.float16, num_sms=3)
        ref = x.half().double() @ w.half().double().t()
    assert out.shape == (m, n)
    assert _rel_err(out, ref) <= TOLERANCE[precision]


def test_a_persistent_program_that_skipped_its_later_tiles_would_be_caught() -> None:
    """With one program per SM the persistent loop must go round: launched with 3 programs but told there
    are 6 (NUM_SMS), every program strides past its second tile, half the output stays unwritten."""
    from cotune.kernels.triton_jit import matmul as jit
    from triton.tools.tensor_descriptor import TensorDescriptor

    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(33, 80, generator=gen), torch.randn(48, 80, generator=gen)
    cfg = {**SMALL, "SPLIT_K": 1, "KERNEL": PERSISTENT_TMA}
    c = torch.zeros((1, 33, 48))
    descs = (TensorDescriptor.from_tensor(x, [16, 32]), TensorDescriptor.from_tensor(w, [32, 32]),
             TensorDescriptor.from_tensor(c[0], [16, 32]))  # fmt: skip
    meta = jit._persistent_meta(cfg, torch.float32, False, 6)
    jit.persistent_kernel[(3,)](*descs, c, c, c, 33, 48, 80, c.stride(0), c.stride(1), **meta)
    assert _rel_err(c[0], x.double() @ w.double().t()) > TOLERANCE[Precision.FP32]


# Compiles through the JIT's own warmup (the precompile path) for sm_90 with no GPU: the arguments are
# specialised as for a real launch of matmul(x, w.t(), ...) on the 4096 x 8192 x 8192 shape.
_HOPPER = """
import json, torch
from cotune.kernels.triton_jit.aot import compile_only
from cotune.kernels.triton_jit.matmul import warmup
types = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}
out = []
with compile_only(90):
    for dtype, cfg in CASES:
        k = warmup(4096, 8192, 8192, types[dtype], torch.bfloat16, cfg, tf32=False, scaled=dtype == "fp8",
                   num_sms=132)
        ptx = k.asm["ptx"]
        out.append({"wgmma": ptx.count("wgmma.mma_async"), "tma": ptx.count("cp.async.bulk.tensor"),
                    "setmaxnreg": ptx.count("setmaxnreg"), "warps": k.metadata.num_warps,
                    "shared": k.metadata.shared})
print(json.dumps(out))
"""


def _cfg(kind: str, bm: int, bn: int, bk: int, split: int, warps: int, stages: int) -> dict:
    return {"KERNEL": kind, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "SPLIT_K": split,
            "num_warps": warps, "num_stages": stages}  # fmt: skip


def test_hopper_variants_compile_to_wgmma_and_tma_within_the_shared_memory_estimate() -> None:
    """The claim of the TMA variants, read from the PTX Triton makes for sm_90: A and B arrive by bulk tensor
    copies (cp.async.bulk.tensor) and feed wgmma; the warp-specialised one really is (setmaxnreg, and 8
    consumer warps added to the 4 of the config). The tutorial kernel, for contrast, has wgmma but no TMA.
    Shared memory: never above the estimate (a config the device rejects must not pass its constraint), at
    most one pipeline stage and one output tile below it."""
    cases = [
        (dtype, cfg)
        for dtype in ("bf16", "fp8")
        for cfg in (
            _cfg(TUTORIAL, 128, 256, 64, 1, 8, 3),
            _cfg(PERSISTENT_TMA, 128, 256, 64, 1, 8, 3),
            _cfg(PERSISTENT_TMA, 64, 128, 128, 4, 4, 4),
            _cfg(PERSISTENT_TMA_WS, 64, 128, 64, 1, 4, 4),
            _cfg(PERSISTENT_TMA_WS, 64, 64, 128, 2, 4, 3),
        )
    ]
    results = compile_in_subprocess(f"CASES = {cases!r}\n{_HOPPER}")
    for (dtype, cfg), r in zip(cases, results, strict=True):
        kind, where = cfg["KERNEL"], (dtype, cfg, r)
        assert r["wgmma"] > 0, where
        assert (r["tma"] > 0) == (kind != TUTORIAL), where
        specialised = r["setmaxnreg"] > 0 and r["warps"] == cfg["num_warps"] + 8
        assert specialised == (kind == PERSISTENT_TMA_WS), where
        precision = Precision(dtype)
        est = smem_estimate(Config.make(cfg), precision)
        if kind != TUTORIAL:
            a_b = (cfg["BLOCK_M"] + cfg["BLOCK_N"]) * cfg["BLOCK_K"] * precision.itemsize
            out = cfg["BLOCK_M"] * cfg["BLOCK_N"] * (4 if cfg["SPLIT_K"] > 1 else 2)
            assert r["shared"] <= est <= r["shared"] + a_b + out + 1024, where


def test_constraints_prune_by_device_with_reasons() -> None:
    space = TritonMatmul().space()
    fp8 = Problem.make("triton_matmul", {"M": 128, "N": 8192, "K": 8192}, "fp8")
    ok = Config.make({**TUTORIAL_SEEDS[0]})
    assert space.violation(ok, fp8, H100) is None
    reason = space.violation(ok, fp8, A100)
    assert reason and "fp8" in reason and "8.0" in reason

    bf16 = Problem.make("triton_matmul", {"M": 4096, "N": 8192, "K": 8192}, "bf16")
    # 4 stages x (128x64 + 64x256) x 2 B = 192 KiB: fits the H100's 227 KiB, not the A100's 163 KiB
    big = Config.make({**TUTORIAL_SEEDS[0], "num_stages": 4})
    assert space.violation(big, bf16, H100) is None
    reason = space.violation(big, bf16, A100)
    assert reason and "shared memory" in reason

    decode = Problem.make("triton_matmul", {"M": 16, "N": 8192, "K": 8192}, "bf16")
    reason = space.violation(Config.make({**TUTORIAL_SEEDS[0]}), decode, H100)
    assert reason and "BLOCK_M 128" in reason
    assert 0 < len(space.feasible_points(decode, H100)) < len(space.feasible_points(bf16, H100))


def test_variant_constraints_name_their_reason() -> None:
    space = TritonMatmul().space()
    bf16 = Problem.make("triton_matmul", {"M": 4096, "N": 8192, "K": 8192}, "bf16")
    tma = Config.make(_cfg(PERSISTENT_TMA, 128, 128, 64, 1, 8, 3))
    ws = Config.make(_cfg(PERSISTENT_TMA_WS, 64, 128, 64, 1, 4, 3))
    assert space.violation(tma, bf16, H100) is None and space.violation(ws, bf16, H100) is None
    assert "needs compute capability 9.0" in (space.violation(tma, bf16, A100) or "")
    fp32 = Problem.make("triton_matmul", {"M": 4096, "N": 8192, "K": 8192}, "fp32")
    assert "not fp32" in (space.violation(tma, fp32, H100) or "")
    # 128-row tiles fail in Triton's warp-specialisation pass, 8 warps run unspecialised
    for bad in ({"BLOCK_M": 128}, {"num_warps": 8}, {"BLOCK_N": 256}):
        reason = space.violation(Config.make({**ws.values, **bad}), bf16, H100)
        assert reason and "warp specialisation needs BLOCK_M 64" in reason
    odd = Problem.make("triton_matmul", {"M": 4096, "N": 8192, "K": 8200}, "bf16")  # 16,400-byte rows: fine
    assert space.violation(tma, odd, H100) is None
    odd = Problem.make("triton_matmul", {"M": 4096, "N": 8192, "K": 8196}, "bf16")
    assert "not a multiple of 16 (TMA)" in (space.violation(tma, odd, H100) or "")
    assert space.violation(Config.make({**tma.values, "KERNEL": TUTORIAL}), odd, H100) is None


def test_program_key_treats_a_config_without_kernel_as_the_tutorial() -> None:
    """The H100 recordings predate KERNEL: their configs keep their own keys, and their twins (GROUP_M beyond
    the grid's rows) stay twins; the persistent variants have the same twins, and differ from the tutorial."""
    kernel = TritonMatmul()
    decode = Problem.make("triton_matmul", {"M": 16, "N": 8192, "K": 8192}, "bf16")
    old = {k: v for k, v in SMALL.items() if k != "GROUP_M"} | {"SPLIT_K": 1}
    assert kernel.program_key(decode, Config.make({**old, "GROUP_M": 1})) == Config.make({**old, "GROUP_M": 1}).key
    for kind in (None, PERSISTENT_TMA):
        extra = {} if kind is None else {"KERNEL": kind}
        keys = {kernel.program_key(decode, Config.make({**old, **extra, "GROUP_M": g})) for g in (1, 4, 8, 16)}
        assert len(keys) == 1
    tutorial = kernel.program_key(decode, Config.make({**old, "GROUP_M": 8, "KERNEL": TUTORIAL}))
    assert tutorial != kernel.program_key(decode, Config.make({**old, "GROUP_M": 8, "KERNEL": PERSISTENT_TMA}))


def test_autotune_export_takes_tutorial_winners_and_refuses_persistent_ones(tmp_path) -> None:
    """@triton.autotune over matmul_kernel can launch only the tutorial variant: KERNEL is dropped from its
    configs; a persistent winner is refused with a clear error rather than written as a config that fails."""
    from cotune.tuner.errors import SpecError
    from cotune.tuner.export.autotune import winners

    entry = {"shape": {"M": 16, "N": 64, "K": 64}, "config": {**SMALL, "SPLIT_K": 1, "KERNEL": TUTORIAL}}
    [won] = winners("triton_matmul", [entry])
    assert "KERNEL" not in won.meta and won.meta["BLOCK_M"] == 16
    with pytest.raises(SpecError, match="runs the persistent_tma kernel"):
        winners("triton_matmul", [{**entry, "config": {**entry["config"], "KERNEL": PERSISTENT_TMA}}])


def test_measure_without_a_gpu_is_a_clear_failure() -> None:
    problem = Problem.make("triton_matmul", {"M": 16, "N": 32, "K": 32}, "fp16")
    with pytest.raises(CandidateError) as exc:
        TritonMatmul().measure(problem, Config.make({**SMALL, "SPLIT_K": 1}), H100, BenchSettings())
    assert exc.value.kind is FailureKind.RUNTIME
    assert "NVIDIA GPU" in str(exc.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", [TUTORIAL, PERSISTENT_TMA, PERSISTENT_TMA_WS])
@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp8"])
def test_measures_on_a_gpu(precision: str, kind: str) -> None:
    from cotune.tuner.device.profiles import detect

    device = detect("cuda")
    if precision == "fp8" and not device.supports_fp8:
        pytest.skip("fp8 needs compute capability 8.9+")
    problem = Problem.make("triton_matmul", {"M": 256, "N": 512, "K": 1008}, precision)  # K: a partial last block
    config = Config.make(TUTORIAL_SEEDS[3] if kind == TUTORIAL else _cfg(kind, 64, 128, 64, 2, 4, 3))
    reason = TritonMatmul().space().violation(config, problem, device)
    if reason:
        pytest.skip(reason)  # the TMA variants need Hopper
    m = TritonMatmul().measure(problem, config, device, BenchSettings(repeats=10))
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
