"""Compiling ahead: a pool compiles the next candidates into the compiler's cache while one is timed."""

from __future__ import annotations

import pytest
import torch
from cotune.kernels.c_matmul.kernel import CMatmul
from cotune.kernels.cuda_gemm.compile import arch_of, compile_gemm
from cotune.tuner.device.profiles import recorded_profile
from cotune.tuner.driver import tune_job
from cotune.tuner.measure.precompile import Precompiler
from cotune.tuner.spec.job import parse_spec
from cotune.tuner.track.tracker import NullTracker
from cotune.tuner.types import Config, FailureKind, Problem

H100 = recorded_profile("NVIDIA H100 80GB HBM3")
GEMM = Problem.make("cuda_gemm", {"M": 256, "N": 256, "K": 256}, "fp32")


def _gemm(bm: int, tm: int = 4) -> Config:
    return Config.make({"BM": bm, "BN": 64, "BK": 16, "TM": tm, "TN": 4})


def test_pool_fills_the_nvrtc_cache_the_timing_process_reads(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # a fresh cotune-build cache, for the pool processes too
    configs = [_gemm(32), _gemm(64)]
    with Precompiler(2) as pool:
        for c in configs:
            pool.submit(GEMM, c, H100)
        assert [pool.result(GEMM, c, timeout_s=120) for c in configs] == [None, None]
    for c in configs:
        assert compile_gemm(c, GEMM.dtype, arch_of((9, 0)), cache_dir=tmp_path / "cotune-build").cached


def test_a_config_that_does_not_compile_fails_in_the_pool_with_the_compiler_message(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    # 16x64 tile, 1x1 per thread: 1024 threads cannot share a 16x8 A tile's 128 loads evenly
    bad = Config.make({"BM": 16, "BN": 64, "BK": 8, "TM": 1, "TN": 1})
    with Precompiler(1) as pool:
        pool.submit(GEMM, bad, H100)
        failure = pool.result(GEMM, bad, timeout_s=120)
    assert failure is not None and failure.kind is FailureKind.COMPILE
    assert "static assertion" in failure.message
    with Precompiler(1) as pool:
        assert pool.result(GEMM, _gemm(32), timeout_s=1) is None  # never submitted: measure() compiles it


def test_one_pool_keeps_each_problems_compiles_apart(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    other = Problem.make("cuda_gemm", {"M": 512, "N": 256, "K": 256}, "fp32")
    bad = Config.make({"BM": 16, "BN": 64, "BK": 8, "TM": 1, "TN": 1})
    with Precompiler(1) as pool:
        pool.submit(GEMM, bad, H100)
        pool.submit(other, bad, H100)
        first = pool.result(GEMM, bad, timeout_s=120)
        assert first is not None and first.kind is FailureKind.COMPILE
        # the same config for another problem is its own compile, not the first problem's result again
        second = pool.result(other, bad, timeout_s=120)
        assert second is not None and second.kind is FailureKind.COMPILE
        assert pool.result(other, bad, timeout_s=1) is None  # taken once
        pool.submit(GEMM, _gemm(32), H100)
        pool.forget(GEMM)  # the problem ended before its asked-ahead config was timed
        assert pool.result(GEMM, _gemm(32), timeout_s=1) is None


SPEC = """
name: ahead
kernel: c_matmul
problems: [{M: [64, 32], N: 64, K: 64}]
budget: {trials: 5}
sampler: {name: random, seed: 3}
bench: {warmup: 0, repeats: 2, remeasure_repeats: 2, compile_workers: 2}
top_k: 1
"""


def test_the_driver_asks_ahead_and_leaves_no_trial_running(tmp_path, monkeypatch, cpu) -> None:
    import optuna
    from optuna.trial import TrialState

    monkeypatch.setattr(CMatmul, "precompiles", True)  # off by default on CPUs: compiles would share cores
    url = f"sqlite:///{tmp_path}/o.db"
    outcomes = tune_job(parse_spec(SPEC), url, cpu, NullTracker())  # two problems, one pool
    for outcome in outcomes:
        assert outcome.measured == 5 and outcome.best is not None
        study = optuna.load_study(study_name=outcome.study_name, storage=url)
        states = [t.state for t in study.trials]
        assert TrialState.RUNNING not in states
        ahead = [t for t in study.trials if "not_measured" in t.user_attrs]
        assert ahead and all(t.state is TrialState.PRUNED for t in ahead)  # closed, not counted


def test_compile_workers_zero_turns_the_pool_off(tmp_path, monkeypatch, cpu) -> None:
    import optuna

    monkeypatch.setattr(CMatmul, "precompiles", True)
    spec = parse_spec(SPEC.replace("compile_workers: 2", "compile_workers: 0"))
    url = f"sqlite:///{tmp_path}/o.db"
    for outcome in tune_job(spec, url, cpu, NullTracker()):
        study = optuna.load_study(study_name=outcome.study_name, storage=url)
        assert outcome.measured == 5 and not any("not_measured" in t.user_attrs for t in study.trials)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    ("kernel", "shape", "config"),
    [
        ("triton_matmul", {"M": 128, "N": 1024, "K": 1024},
         {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "SPLIT_K": 1, "num_warps": 4, "num_stages": 3}),
        ("triton_attention", {"batch": 1, "heads": 4, "seq_q": 256, "seq_k": 256, "head_dim": 64, "causal": 1},
         {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}),
    ],
)  # fmt: skip
def test_triton_warmup_in_the_pool_compiles_on_a_gpu(kernel, shape, config) -> None:
    from cotune.tuner.device.profiles import detect

    problem = Problem.make(kernel, shape, "bf16")
    with Precompiler(1) as pool:
        pool.submit(problem, Config.make(config), detect("cuda"))
        assert pool.result(problem, Config.make(config), timeout_s=300) is None
