"""The fused-MoE layer (kernels/fused_moe.py): under Triton's interpreter it matches its fp32 reference in every
dtype the servers name, for several configs and awkward shapes; its routing and block alignment are well
formed; bad input is refused in one line; the space, program keys and cost model say what the servers run;
it measures on the CPU through the interpreter and on a GPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from cotune.kernels.fused_moe import FusedMoE, _note_cpu_timings, make_inputs, references
from cotune.kernels.gpu import TOLERANCE
from cotune.tuner.device.profiles import recorded_profile
from cotune.tuner.measure.kernel import BenchSettings, CandidateError
from cotune.tuner.types import Config, FailureKind, Precision, Problem

H100 = recorded_profile("NVIDIA H100 80GB HBM3")
A100 = recorded_profile("NVIDIA A100-SXM4-80GB")
CPU = torch.device("cpu")
KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")


def _config(*values: int) -> dict[str, int]:
    return dict(zip(KEYS, values, strict=True))


def _problem(precision: str, **dims: int) -> Problem:
    return Problem.make("fused_moe", dims, precision)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max())


def _run(problem: Problem, config: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor, object]:
    from cotune.kernels.triton_jit.fused_moe import FusedMoELayer

    x = make_inputs(problem, CPU)
    layer = FusedMoELayer(x.x, x.logits, x.weights, x.topk, config)
    return layer(), references(problem, x)[0], layer


# Each case has a ragged M (not a multiple of BLOCK_SIZE_M, mostly smaller than one block), E not a power of
# two, topk > 1 in all but one, and I not a multiple of BLOCK_SIZE_N; K tails where H or I is not a multiple
# of BLOCK_SIZE_K. fp8_block128 needs H and I multiples of 128 and launches BLOCK_SIZE_K 256 as 128.
CASES = [
    ("bf16", dict(M=5, E=3, H=64, I=40, topk=2), _config(16, 32, 64, 1, 4, 2)),
    ("bf16", dict(M=33, E=5, H=96, I=48, topk=3), _config(32, 64, 64, 16, 4, 3)),
    ("fp16", dict(M=5, E=3, H=64, I=40, topk=2), _config(16, 32, 64, 1, 4, 2)),
    ("fp16", dict(M=1, E=6, H=80, I=24, topk=1), _config(64, 32, 32, 8, 4, 3)),  # vLLM's default shape of config
    ("fp8", dict(M=9, E=6, H=64, I=48, topk=2), _config(16, 32, 64, 1, 4, 2)),
    ("fp8", dict(M=20, E=3, H=96, I=40, topk=2), _config(32, 64, 128, 32, 8, 4)),
    ("fp8_block128", dict(M=7, E=3, H=256, I=128, topk=2), _config(16, 128, 128, 1, 4, 3)),
    ("fp8_block128", dict(M=3, E=5, H=128, I=256, topk=3), _config(32, 256, 256, 16, 4, 2)),
]


@pytest.mark.parametrize(("precision", "dims", "config"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_the_reference_under_the_interpreter(precision: str, dims: dict, config: dict) -> None:
    problem = _problem(precision, **dims)
    out, ref, _ = _run(problem, config)
    assert out.shape == (dims["M"], dims["H"])
    assert out.dtype == (torch.float16 if precision == "fp16" else torch.bfloat16)
    assert _rel_err(out, ref) <= TOLERANCE[problem.dtype]


def test_the_check_is_not_vacuous() -> None:
    """The same output is far from the reference of another routing and of unweighted slots."""
    from cotune.kernels.triton_jit.fused_moe_ops import reference_intermediate, reference_output, route

    problem = _problem("bf16", M=9, E=4, H=64, I=32, topk=2)
    out, ref, _ = _run(problem, _config(16, 32, 64, 1, 4, 2))
    assert _rel_err(out, ref) <= TOLERANCE[Precision.BF16]
    x = make_inputs(problem, CPU)
    weights, ids = route(x.logits, 2)
    w1 = lambda e: x.weights.w1[e].float()  # noqa: E731
    w2 = lambda e: x.weights.w2[e].float()  # noqa: E731
    plain = lambda t: t.float()  # noqa: E731
    for other_ids, other_weights in (((ids + 1) % 4, weights), (ids, torch.ones_like(weights))):
        act = reference_intermediate(x.x, other_ids, w1, quant_a1=plain, stored=None)
        wrong = reference_output(act, other_ids, other_weights, w2, quant_a2=plain)
        assert _rel_err(out, wrong) > 10 * TOLERANCE[Precision.BF16]


def test_the_fp8_reference_uses_the_kernels_quantised_inputs() -> None:
    """Against the unquantised fp32 layer the fp8 paths are off by their quantisation (what a job's accuracy
    bound sees); against the reference from the same quantised inputs, by rounding only."""
    for precision, dims, config in (CASES[4], CASES[6]):
        problem = _problem(precision, **dims)
        x = make_inputs(problem, CPU)
        ref, ref32 = references(problem, x)
        out, _, _ = _run(problem, config)
        assert _rel_err(out, ref) < 0.01 < _rel_err(out, ref32) < 0.2


def test_routing_is_softmax_top_k_renormalised() -> None:
    from cotune.kernels.triton_jit.fused_moe_ops import route

    logits = torch.randn(50, 7, generator=torch.Generator().manual_seed(3))
    weights, ids = route(logits, 3)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    top = torch.topk(logits, 3, dim=-1).indices  # softmax is monotone: the largest logits win
    assert torch.equal(torch.sort(ids.long(), -1).values, torch.sort(top, -1).values)
    picked = torch.gather(logits, 1, ids.long())
    # renormalised over the chosen experts: the softmax's denominator cancels
    assert torch.allclose(weights, torch.softmax(picked, dim=-1), atol=1e-6)
    assert torch.allclose(weights.sum(-1), torch.ones(50))


@pytest.mark.parametrize("block_m", [16, 64])
def test_alignment_groups_every_token_slot_once_by_expert(block_m: int) -> None:
    from cotune.kernels.triton_jit.fused_moe_ops import align, route

    num_experts, topk = 6, 3
    _, ids = route(torch.randn(37, num_experts, generator=torch.Generator().manual_seed(4)), topk)
    ids[ids == 5] = 4  # leave one expert without tokens
    al = align(ids, block_m, num_experts)
    flat, numel = ids.flatten(), ids.numel()
    used = int(al.num_tokens_post_padded.item())

    assert al.sorted_token_ids.numel() == numel + num_experts * (block_m - 1)  # vLLM's buffer size
    assert used % block_m == 0 and al.expert_ids.numel() == -(-al.sorted_token_ids.numel() // block_m)
    real = al.sorted_token_ids[al.sorted_token_ids != numel]
    assert sorted(real.tolist()) == list(range(numel))  # each (token, slot) once, the rest is the sentinel
    assert bool((al.sorted_token_ids[used:] == numel).all())
    blocks = al.sorted_token_ids[:used].view(-1, block_m)
    for b, block in enumerate(blocks):
        rows = block[block != numel]
        assert rows.numel() > 0, "a used block holds at least one real row"
        assert bool((flat[rows.long()] == al.expert_ids[b]).all())
        assert rows.tolist() == sorted(rows.tolist())  # pairs keep their flat order within an expert
    assert al.expert_ids[: used // block_m].tolist() == sorted(al.expert_ids[: used // block_m].tolist())
    assert bool((al.expert_ids[used // block_m :] == -1).all())
    assert 5 not in al.expert_ids.tolist()


def test_bad_input_is_one_clear_line() -> None:
    from cotune.kernels.triton_jit.fused_moe import FusedMoELayer
    from cotune.kernels.triton_jit.fused_moe_ops import route

    x = make_inputs(_problem("bf16", M=4, E=3, H=64, I=32, topk=2), CPU)
    with pytest.raises(ValueError, match="lacks BLOCK_SIZE_K, num_stages") as exc:
        FusedMoELayer(x.x, x.logits, x.weights, 2, {k: 16 for k in KEYS if k not in ("BLOCK_SIZE_K", "num_stages")})
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match=r"shapes disagree: x \(4, 64\), logits \(3, 3\)"):
        FusedMoELayer(x.x, x.logits[:3], x.weights, 2, _config(16, 32, 64, 1, 4, 2))
    with pytest.raises(ValueError, match="topk=4 must be between 1 and E=3"):
        FusedMoELayer(x.x, x.logits, x.weights, 4, _config(16, 32, 64, 1, 4, 2))
    with pytest.raises(ValueError, match="topk=0 must be between 1 and the number of experts"):
        route(x.logits, 0)
    fp8 = make_inputs(_problem("fp8", M=4, E=3, H=64, I=32, topk=2), CPU)
    unscaled = dataclasses.replace(fp8.weights, a2_scale=None)
    with pytest.raises(ValueError, match="fp8 weights need a2_scale"):
        FusedMoELayer(fp8.x, fp8.logits, unscaled, 2, _config(16, 32, 64, 1, 4, 2))

    kernel, config = FusedMoE(), Config.make(_config(16, 128, 128, 1, 4, 2))
    for problem, message, pruned in (
        (_problem("bf16", M=4, E=3, H=64, I=32, topk=4), "topk=4 > E=3", "topk <= E"),
        (_problem("fp8_block128", M=4, E=3, H=192, I=128, topk=2), "needs H divisible by 128", "H divisible by 128"),
    ):
        with pytest.raises(CandidateError, match=message) as failure:
            kernel.measure(problem, config, H100, BenchSettings())
        assert failure.value.kind is FailureKind.RUNTIME and "\n" not in str(failure.value)
        # the space prunes every config of such a problem before anything runs, saying why
        assert pruned in (kernel.space().violation(config, problem, H100) or "")


def test_space_is_vllms_grid_pruned_by_device_and_block_rule() -> None:
    space = FusedMoE().space()
    assert space.size == 1920  # benchmark_moe's get_configs_compute_bound on CUDA
    mixtral = {"M": 64, "E": 8, "H": 4096, "I": 7168, "topk": 2}  # Mixtral-8x7B at tensor parallel 2
    ok = Config.make(_config(64, 128, 64, 16, 4, 3))
    for precision in ("fp8", "fp8_block128"):
        problem = Problem.make("fused_moe", mixtral, precision)
        reason = space.violation(ok, problem, A100)
        assert reason and precision in reason and "8.0" in reason
    assert space.violation(ok, Problem.make("fused_moe", mixtral, "fp8"), H100) is None

    block = Problem.make("fused_moe", mixtral, "fp8_block128")
    assert "BLOCK_SIZE_K a multiple of 128" in (space.violation(ok, block, H100) or "")
    feasible = space.feasible_points(block, H100)
    assert feasible and all(c["BLOCK_SIZE_N"] % 128 == 0 and c["BLOCK_SIZE_K"] % 128 == 0 for c in feasible)

    # 4 stages x (128x64 + 64x256) x 2 B = 192 KiB: fits the H100's 227 KiB, not the A100's 163 KiB
    bf16 = Problem.make("fused_moe", mixtral, "bf16")
    big = Config.make(_config(128, 256, 64, 1, 4, 4))
    assert space.violation(big, bf16, H100) is None
    assert "shared memory" in (space.violation(big, bf16, A100) or "")


def test_program_keys_join_only_configs_that_launch_the_same_programs() -> None:
    kernel = FusedMoE()
    decode = _problem("bf16", M=1, E=8, H=4096, I=7168, topk=2)  # 2 slots: the grid has 2 M-blocks of 16
    keys = {g: kernel.program_key(decode, Config.make(_config(16, 64, 128, g, 4, 4))) for g in (1, 16, 32, 64)}
    assert keys[16] == keys[32] == keys[64] != keys[1]
    prefill = _problem("bf16", M=4096, E=8, H=4096, I=7168, topk=2)
    assert len({kernel.program_key(prefill, Config.make(_config(64, 128, 64, g, 4, 4))) for g in (1, 16, 32, 64)}) == 4
    block = _problem("fp8_block128", M=64, E=32, H=7168, I=2048, topk=8)
    k256, k128 = (kernel.program_key(block, Config.make(_config(64, 128, bk, 1, 4, 3))) for bk in (256, 128))
    assert k256 == k128  # vLLM launches BLOCK_SIZE_K 256 as 128 on the block path
    fp8 = _problem("fp8", M=64, E=32, H=7168, I=2048, topk=8)
    assert kernel.program_key(fp8, Config.make(_config(64, 128, 256, 1, 4, 3))) != kernel.program_key(
        fp8, Config.make(_config(64, 128, 128, 1, 4, 3))
    )


def test_cost_model_counts_both_gemms_and_the_experts_hit() -> None:
    kernel = FusedMoE()
    decode = _problem("bf16", M=1, E=8, H=4096, I=7168, topk=2)
    assert kernel.flops(decode) == 2 * 1 * 2 * (2 * 7168 * 4096 + 4096 * 7168)
    weights = 2 * 3 * 7168 * 4096 * 2  # two experts' w1 and w2 in bf16
    activations = 2 * 4096 * 2 + 1 * 2 * (3 * 7168 + 4096) * 2 * 2
    assert kernel.bytes_moved(decode) == weights + activations
    prefill = _problem("fp8_block128", M=4096, E=32, H=7168, I=2048, topk=8)
    scales = 3 * 2048 * 7168 // (128 * 128) * 4
    expected = 32 * (3 * 2048 * 7168 + scales) + 2 * 4096 * 7168 * 2 + 4096 * 8 * (3 * 2048 + 7168) * 2 * 2
    assert kernel.bytes_moved(prefill) == expected


def test_measures_on_the_cpu_through_the_interpreter(cpu, capsys) -> None:
    problem = _problem("bf16", M=3, E=4, H=64, I=32, topk=2)
    m = FusedMoE().measure(problem, Config.make(_config(16, 32, 64, 1, 4, 2)), cpu, BenchSettings(repeats=2))
    assert "timings say nothing about any GPU" in capsys.readouterr().err or _note_cpu_timings.cache_info().hits
    assert len(m.times_s) == 2 and m.median_s > 0
    assert m.max_rel_error <= TOLERANCE[Precision.BF16] and m.fp32_error is not None
    assert "interpreter" in FusedMoE.description and "nothing about a GPU" in FusedMoE.description


def test_measure_without_a_gpu_is_a_clear_failure() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(CandidateError, match="NVIDIA GPU") as exc:
        problem = _problem("bf16", M=4, E=4, H=64, I=32, topk=2)
        FusedMoE().measure(problem, Config.make(CASES[0][2]), H100, BenchSettings())
    assert exc.value.kind is FailureKind.RUNTIME


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp8", "fp8_block128"])
def test_measures_on_a_gpu(precision: str) -> None:
    """The layer compiles, matches and times on CUDA, for a grid config and for vLLM's default (off the grid),
    plain and replayed from a CUDA graph (as vLLM's tuner times it)."""
    from cotune.tuner.device.profiles import detect

    device = detect("cuda")
    if Precision(precision).is_fp8 and not device.supports_fp8:
        pytest.skip("fp8 needs compute capability 8.9+")
    problem = _problem(precision, M=96, E=8, H=1024, I=512, topk=2)
    kernel = FusedMoE()
    grid = Config.make(_config(32, 128, 128, 16, 4, 3))
    for config in (grid, kernel.baselines(problem, device)["vllm_default"]):
        kernel.precompile(problem, config, device)
        for graph in (False, True):
            m = kernel.measure(problem, config, device, BenchSettings(repeats=10, graph=graph))
            assert m.median_s > 0 and m.max_rel_error <= TOLERANCE[Precision(precision)]
