"""GPU device profiles: the peak table, recorded profiles, and what happens without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cotune.tuner.device.gpu_specs import GPU_SPECS, lookup, roofline_fraction
from cotune.tuner.device.profiles import detect, device_for, recorded_profile
from cotune.tuner.errors import CotuneError
from cotune.tuner.types import DeviceProfile

NO_DRIVER = not Path("/dev/nvidiactl").exists()


@pytest.mark.parametrize(
    ("reported", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
        ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
    ],
)
def test_reported_names_find_their_peaks(reported: str, key: str) -> None:
    spec = lookup(reported)
    assert spec is not None and spec.key == key


def test_unknown_or_similar_names_find_nothing() -> None:
    assert lookup("NVIDIA L40") is None  # not the L4 nor the L40S
    assert lookup("Tesla V100-SXM2-16GB") is None


def test_peak_table_is_dense_and_consistent() -> None:
    for spec in GPU_SPECS:
        p = spec.peak_flops
        # datasheets round each figure on its own (L40S: 183 TF32, 362 BF16)
        assert p["bf16"] == p["fp16"] == pytest.approx(2 * p["tf32"], rel=0.02), spec.key
        assert "fp8" not in p or p["fp8"] == pytest.approx(2 * p["bf16"], rel=0.02), spec.key
        assert spec.source.startswith("https://")
    assert lookup("NVIDIA H100 80GB HBM3").peak_flops["bf16"] == pytest.approx(989.5e12)


def test_roofline_fraction_uses_the_binding_roof() -> None:
    h100 = lookup("NVIDIA H100 80GB HBM3")
    # 8192^3 bf16 GEMM at 1.5 ms: compute-bound, 733 TFLOP/s of 989.5
    flops, bytes_moved = 2 * 8192**3, 3 * 2 * 8192**2
    assert roofline_fraction(flops, bytes_moved, 1.5e-3, "bf16", h100) == pytest.approx(0.741, abs=1e-3)
    # a GEMV-like decode shape is bound by memory: 256 MiB at 3.35 TB/s takes 80 us
    assert roofline_fraction(2 * 8192**2, 2 * 8192**2 * 2, 160e-6, "bf16", h100) == pytest.approx(0.5, abs=0.01)


def test_recorded_profiles_round_trip_and_know_fp8() -> None:
    h100, a100 = recorded_profile("NVIDIA H100 80GB HBM3"), recorded_profile("nvidia-a100-sxm4-80gb")
    assert h100.compute_capability == (9, 0) and h100.supports_fp8
    assert a100.compute_capability == (8, 0) and not a100.supports_fp8
    assert h100.shared_mem_per_block == 227 * 1024 and a100.shared_mem_per_block == 163 * 1024
    assert DeviceProfile.from_json(h100.to_json()) == h100
    with pytest.raises(CotuneError, match="no recorded device profile .*known: nvidia-a100"):
        recorded_profile("NVIDIA GeForce 256")


@pytest.mark.skipif(not NO_DRIVER, reason="this machine has an NVIDIA driver")
def test_no_gpu_is_a_clear_error() -> None:
    with pytest.raises(CotuneError, match="no usable NVIDIA GPU"):
        detect("cuda")
    with pytest.raises(CotuneError, match="kernel triton_matmul runs on cuda only"):
        device_for("triton_matmul", ("cuda",))
    assert device_for("c_matmul", ("cpu",)).kind == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_profile_timer_and_energy_on_a_gpu() -> None:
    from cotune.kernels.gpu_timing import energy_per_call, time_gpu
    from cotune.tuner.measure.kernel import BenchSettings

    device = detect("cuda")
    assert device.sm_count > 0 and device.shared_mem_per_block >= 48 * 1024 and device.l2_bytes > 0
    assert device.name == torch.cuda.get_device_name(0)
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    times = time_gpu(lambda: a @ a, device, BenchSettings(repeats=10, target_s=0.05))
    assert len(times) >= 10 and all(t > 0 for t in times)
    graph_times = time_gpu(lambda: a @ a, device, BenchSettings(repeats=10, target_s=0.05, graph=True))
    assert len(graph_times) >= 10
    joules = energy_per_call(lambda: a @ a, sorted(times)[len(times) // 2])
    assert 0 < joules < 10


def test_validate_counts_what_a_recorded_gpu_can_run(tmp_path) -> None:
    from tests.cli import cotune

    spec = "name: v\nkernel: triton_matmul\nproblems: [{M: 16, N: 4096, K: 4096}]\nprecisions: [fp8]\n"
    spec += "budget: {trials: 5}\n"
    (tmp_path / "spec.yaml").write_text(spec)
    a100 = cotune("validate", "spec.yaml", "--device", "nvidia-a100-sxm4-80gb", cwd=tmp_path)
    h100 = cotune("validate", "spec.yaml", "--device", "NVIDIA H100 80GB HBM3", cwd=tmp_path)
    assert a100.returncode == 0 and h100.returncode == 0, a100.stderr + h100.stderr
    assert "on NVIDIA A100-SXM4-80GB: 0 feasible; pruned by precision_supported 46080" in " ".join(a100.stdout.split())
    # 2,976 of the tutorial variant and as many of persistent_tma; no 64-row warp-specialised tile fits M=16
    assert "on NVIDIA H100 80GB HBM3: 5952 feasible" in " ".join(h100.stdout.split())
