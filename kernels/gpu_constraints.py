"""Hardware constraints shared by the GPU kernels, checked before anything is compiled.

Each is a named predicate (see :mod:`cotune.tuner.space.search_space`): it returns None when the config
can run on the device, else the reason it cannot, which the trial records. A device profile without a value
(0 or None) passes, so a space still loads against a partial profile.
"""

from __future__ import annotations

from cotune.tuner.types import Config, DeviceProfile, Precision, Problem

WARP = 32


def threads_fit(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    threads = int(config["num_warps"]) * WARP
    limit = device.max_threads_per_block
    return f"{threads} threads > device limit {limit}" if limit and threads > limit else None


def precision_supported(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    cc = device.compute_capability
    if cc is None:
        return None
    if problem.dtype.is_fp8 and not device.supports_fp8:
        return f"{problem.dtype.value} needs compute capability 8.9 or newer; {device.name} is {cc[0]}.{cc[1]}"
    if problem.dtype in (Precision.BF16, Precision.TF32) and tuple(cc) < (8, 0):
        return f"{problem.dtype.value} needs compute capability 8.0 or newer; {device.name} is {cc[0]}.{cc[1]}"
    return None


def smem_fits(need_bytes: int, device: DeviceProfile) -> str | None:
    limit = device.shared_mem_per_block
    if limit and need_bytes > limit:
        return f"needs ~{need_bytes // 1024} KiB shared memory > {limit // 1024} KiB per block on {device.name}"
    return None
