"""Published peak throughput of NVIDIA data-centre GPUs, for roofline percentages.

Figures are the vendor's datasheet numbers, dense (NVIDIA quotes tensor-core figures "with sparsity" at
twice the dense rate; every figure here is the dense one, i.e. half the sparse one where only that is
given). Throughput is FLOP/s, bandwidth bytes/s. A GPU is matched by the name CUDA/NVML reports, by the
first entry whose every ``match`` word occurs in it, so list the more specific variants first.
"""

from __future__ import annotations

from dataclasses import dataclass

from cotune.tuner.types import Precision

T = 1e12


@dataclass(frozen=True)
class GpuSpec:
    key: str
    match: tuple[str, ...]  # lower-case words that must all occur in the reported device name
    peak_flops: dict[str, float]  # per Precision value, dense tensor-core rate (fp32: CUDA cores)
    mem_bandwidth: float
    source: str


_H100_SXM = "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet (H100 SXM)"
_H100_PCIE = "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet (H100 PCIe)"
_H100_NVL = "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet (H100 NVL)"
_H200 = "https://www.nvidia.com/en-us/data-center/h200/ (H200 SXM, specifications)"
_B200 = "https://www.nvidia.com/en-us/data-center/hgx/ (HGX B200, 8 GPUs; per GPU = 1/8)"
_A100 = "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"
_L40S = "https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413 (L40S)"
_L4 = "https://resources.nvidia.com/en-us-data-center-overview/l4-gpu-datasheet (L4)"


def _rates(fp32: float, tf32: float, half: float, fp8: float | None) -> dict[str, float]:
    out = {
        Precision.FP32.value: fp32 * T,
        Precision.TF32.value: tf32 * T,
        Precision.FP16.value: half * T,
        Precision.BF16.value: half * T,
    }
    if fp8 is not None:
        # block scales change where the scales are applied, not the tensor-core rate
        out[Precision.FP8.value] = out[Precision.FP8_BLOCK128.value] = fp8 * T
    return out


GPU_SPECS: tuple[GpuSpec, ...] = (
    GpuSpec("H200", ("h200",), _rates(67, 494.5, 989.5, 1979), 4.8e12, _H200),
    GpuSpec("H100 NVL", ("h100", "nvl"), _rates(60, 417.5, 835.5, 1670.5), 3.9e12, _H100_NVL),
    GpuSpec("H100 PCIe", ("h100", "pcie"), _rates(51, 378, 756.5, 1513), 2.0e12, _H100_PCIE),
    GpuSpec("H100 SXM", ("h100",), _rates(67, 494.5, 989.5, 1979), 3.35e12, _H100_SXM),
    GpuSpec("B200", ("b200",), _rates(75, 1125, 2250, 4500), 8.0e12, _B200),
    GpuSpec("A100 PCIe 40GB", ("a100", "pcie", "40gb"), _rates(19.5, 156, 312, None), 1.555e12, _A100),
    GpuSpec("A100 SXM 40GB", ("a100", "40gb"), _rates(19.5, 156, 312, None), 1.555e12, _A100),
    GpuSpec("A100 PCIe 80GB", ("a100", "pcie"), _rates(19.5, 156, 312, None), 1.935e12, _A100),
    GpuSpec("A100 SXM 80GB", ("a100",), _rates(19.5, 156, 312, None), 2.039e12, _A100),
    GpuSpec("L40S", ("l40s",), _rates(91.6, 183, 362, 733), 0.864e12, _L40S),
    GpuSpec("L4", ("l4",), _rates(30.3, 60, 121, 242.5), 0.3e12, _L4),
)


def lookup(device_name: str) -> GpuSpec | None:
    """The spec whose match words all occur in ``device_name`` (case-insensitive), or None."""
    words = set(device_name.lower().replace("-", " ").replace("_", " ").split())
    for spec in GPU_SPECS:
        if all(m in words for m in spec.match):
            return spec
    return None


def roofline_fraction(flops: float, bytes_moved: float, seconds: float, precision: str, spec: GpuSpec) -> float:
    """Achieved rate over the roofline bound for this arithmetic intensity (1.0 = at the roof)."""
    peak = spec.peak_flops.get(precision)
    if not peak or seconds <= 0:
        return 0.0
    bound_s = max(flops / peak, bytes_moved / spec.mem_bandwidth)
    return bound_s / seconds
