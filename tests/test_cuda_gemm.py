"""cuda_gemm: NVRTC compiles for sm_80/sm_90 without a GPU, its disk cache, the space's constraints against
recorded GPU profiles, and (on a GPU only) a measured, verified run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cotune.kernels.cuda_gemm import compile as nvrtc_compile
from cotune.kernels.cuda_gemm.compile import compile_gemm
from cotune.kernels.cuda_gemm.kernel import CudaGemm
from cotune.tuner.device.profiles import recorded_profile
from cotune.tuner.measure.kernel import BenchSettings, CandidateError
from cotune.tuner.types import Config, DeviceProfile, FailureKind, Precision, Problem

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
ELF_MAGIC = b"\x7fELF"


def tiles(bm: int, bn: int, bk: int, tm: int, tn: int) -> Config:
    return Config.make({"BM": bm, "BN": bn, "BK": bk, "TM": tm, "TN": tn})


def problem(dtype: str = "fp32", m: int = 1000, n: int = 1000, k: int = 1000) -> Problem:
    return Problem.make("cuda_gemm", {"M": m, "N": n, "K": k}, dtype)


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize(
    ("config", "precision", "arch"),
    [
        (tiles(32, 32, 8, 2, 2), Precision.FP32, "sm_80"),
        (tiles(32, 32, 8, 2, 2), Precision.FP32, "sm_90"),
        (tiles(64, 32, 16, 4, 2), Precision.FP16, "sm_80"),
        (tiles(64, 64, 8, 4, 4), Precision.FP16, "sm_90"),
    ],
)
def test_nvrtc_compiles_a_cubin_for_the_architecture(
    config: Config, precision: Precision, arch: str, tmp_path: Path
) -> None:
    compiled = compile_gemm(config, precision, arch, cache_dir=tmp_path)
    assert not compiled.cached
    assert compiled.cubin.startswith(ELF_MAGIC)
    assert compiled.lowered_name.startswith("_Z4gemmI")  # the mangled gemm<...> instantiation
    assert f"for '{arch}'" in compiled.log  # ptxas -v names the architecture it compiled for


def test_invalid_tiles_fail_to_compile_with_the_nvrtc_message(tmp_path: Path) -> None:
    # 64 x 64 / (2 x 2) = 1024 threads, but a 64 x 8 tile of A has only 512 elements to load.
    with pytest.raises(CandidateError) as info:
        compile_gemm(tiles(64, 64, 8, 2, 2), Precision.FP32, "sm_90", cache_dir=tmp_path)
    assert info.value.kind is FailureKind.COMPILE
    assert "static assertion failed" in str(info.value)
    assert "tile loads must divide evenly" in str(info.value)
    assert not list(tmp_path.glob("*.cubin"))  # failures are not cached


def test_disk_cache_returns_the_same_cubin_without_recompiling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiles(32, 64, 16, 2, 4)
    first = compile_gemm(config, Precision.FP32, "sm_90", cache_dir=tmp_path)

    def no_compile(*args: object) -> None:
        raise AssertionError("NVRTC ran although the cubin was cached")

    monkeypatch.setattr(nvrtc_compile, "_nvrtc_compile", no_compile)  # a cache hit must not reach NVRTC
    second = compile_gemm(config, Precision.FP32, "sm_90", cache_dir=tmp_path)
    assert second.cached
    assert (second.cubin, second.lowered_name, second.log) == (first.cubin, first.lowered_name, first.log)
    # Another architecture is another cache entry, so it must compile.
    with pytest.raises(AssertionError, match="NVRTC ran"):
        compile_gemm(config, Precision.FP32, "sm_80", cache_dir=tmp_path)


@pytest.mark.parametrize("device_name", [H100, A100])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_space_loads_and_has_feasible_configs(device_name: str, dtype: str) -> None:
    space = CudaGemm().space()
    device = recorded_profile(device_name)
    feasible = space.feasible_points(problem(dtype), device)
    assert 0 < len(feasible) < space.size
    assert tiles(64, 64, 8, 4, 4) in feasible


@pytest.mark.parametrize("device_name", [H100, A100])
def test_too_many_threads_is_rejected_with_a_reason(device_name: str) -> None:
    space = CudaGemm().space()
    reason = space.violation(tiles(128, 128, 8, 1, 1), problem(), recorded_profile(device_name))
    assert reason is not None
    assert reason.startswith("threads:") and "16384 threads > device limit 1024" in reason


def test_less_than_a_warp_is_rejected() -> None:
    reason = CudaGemm().space().violation(tiles(16, 16, 8, 4, 4), problem(), recorded_profile(H100))
    assert reason is not None and "16 threads < one warp" in reason


def test_uneven_tile_loads_are_rejected_before_compiling() -> None:
    reason = CudaGemm().space().violation(tiles(64, 64, 8, 2, 2), problem(), recorded_profile(A100))
    assert reason is not None and reason.startswith("tile_loads:")


def test_shared_memory_beyond_the_static_limit_is_rejected() -> None:
    # Outside the space's values: (128 x 64 + 64 x 128) fp32 = 64 KiB, over the 48 KiB of static shared memory
    # even though an H100 block may opt in to 227 KiB.
    reason = CudaGemm().space().violation(tiles(128, 128, 64, 8, 8), problem(), recorded_profile(H100))
    assert reason is not None
    assert reason.startswith("smem:") and "static shared memory" in reason


def test_shared_memory_beyond_the_device_limit_is_rejected() -> None:
    small = dataclasses.replace(recorded_profile(A100), name="small GPU", shared_mem_per_block=16 * 1024)
    space = CudaGemm().space()
    reason = space.violation(tiles(128, 128, 32, 8, 8), problem(), small)  # 32 KiB of fp32 tiles
    assert reason is not None and reason.startswith("smem:") and "16 KiB per block on small GPU" in reason
    assert space.violation(tiles(128, 128, 32, 8, 8), problem("fp16"), small) is None  # fp16 halves it


def test_toolchain_names_nvrtc_and_cuda_python() -> None:
    toolchain = CudaGemm().toolchain()
    assert toolchain["nvrtc"].count(".") == 1
    assert {"cuda-python", "cuda-core", "torch"} <= toolchain.keys()


def test_measure_without_a_gpu_is_a_runtime_failure() -> None:
    if has_cuda():
        pytest.skip("a CUDA device is present")
    with pytest.raises(CandidateError) as info:
        CudaGemm().measure(problem(), tiles(64, 64, 8, 4, 4), recorded_profile(H100), BenchSettings())
    assert info.value.kind is FailureKind.RUNTIME
    assert "needs an NVIDIA GPU" in str(info.value)


def gpu_profile() -> DeviceProfile:
    """A profile of the GPU present, from torch (the recorded profiles may name another GPU)."""
    import torch

    props = torch.cuda.get_device_properties(0)
    return DeviceProfile(
        name=props.name,
        kind="cuda",
        l2_bytes=getattr(props, "L2_cache_size", 0),
        max_threads_per_block=1024,
        compute_capability=(props.major, props.minor),
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize(
    ("config", "shape"),
    [
        (tiles(64, 64, 8, 4, 4), (512, 512, 512)),
        (tiles(32, 64, 16, 2, 4), (1, 300, 77)),  # one row; N and K not tile multiples
        (tiles(128, 128, 8, 8, 8), (257, 130, 1000)),
    ],
)
def test_measure_on_a_gpu_is_correct(dtype: str, config: Config, shape: tuple[int, int, int]) -> None:
    if not has_cuda():
        pytest.skip("needs a CUDA device")
    from cotune.kernels.gpu import TOLERANCE

    m, n, k = shape
    prob = problem(dtype, m, n, k)
    device = gpu_profile()
    kernel = CudaGemm()
    assert kernel.space().violation(config, prob, device) is None
    result = kernel.measure(prob, config, device, BenchSettings(repeats=5, target_s=0.01, max_repeats=50))
    assert result.max_rel_error <= TOLERANCE[prob.dtype]
    assert len(result.times_s) >= 5 and all(t > 0 for t in result.times_s)
    assert result.flops == 2.0 * m * n * k
