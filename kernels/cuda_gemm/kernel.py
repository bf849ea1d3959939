"""``cuda_gemm``: a tiled CUDA C++ GEMM (``gemm.cu``), one NVRTC compile per tile config, launched with cuda.core.

The tile sizes BM, BN, BK (block tile) and TM, TN (per-thread register tile) are template parameters, so each
config is its own instantiation, compiled by :mod:`cotune.kernels.cuda_gemm.compile` and cached on disk. The cubin
is launched on torch's current CUDA stream, so :func:`cotune.kernels.gpu.measure_on_gpu` times it with torch's
CUDA events, as it times every other GPU kernel here.

Shared memory is static, which caps the two staged tiles at 48 KiB per block whatever the GPU's opt-in
maximum; the largest tiles of ``search_spaces/cuda_gemm.yaml`` need 32 KiB (fp32, 128 x 32 + 32 x 128), so
dynamic shared memory (and the cuFuncSetAttribute call it needs) would buy nothing here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cotune.kernels.cuda_gemm.compile import SOURCE, Compiled, arch_of, compile_gemm, nvrtc_version
from cotune.kernels.gemm import GemmKernel
from cotune.kernels.gpu import cuda_device, driver_version, input_dtype, make_operand, measure_on_gpu
from cotune.kernels.gpu_constraints import WARP, smem_fits
from cotune.tuner.measure.kernel import BenchSettings, CandidateError
from cotune.tuner.types import Config, DeviceProfile, FailureKind, Measurement, Precision, Problem

if TYPE_CHECKING:
    import torch

STATIC_SMEM_LIMIT = 48 * 1024  # bytes of static __shared__ a block may declare, on every architecture
MAX_THREADS = 1024  # threads per block on every CUDA architecture, for profiles that do not say


def _tiles(config: Config) -> tuple[int, int, int, int, int]:
    bm, bn, bk, tm, tn = (int(config[k]) for k in ("BM", "BN", "BK", "TM", "TN"))
    return bm, bn, bk, tm, tn


def block_threads(config: Config) -> int:
    """Threads per block: one per TM x TN register tile of the BM x BN block tile."""
    bm, bn, _, tm, tn = _tiles(config)
    return (bm // tm) * (bn // tn)


def _threads(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    bm, bn, _, tm, tn = _tiles(config)
    if bm % tm or bn % tn:
        return f"register tile {tm}x{tn} does not divide block tile {bm}x{bn}"
    threads = block_threads(config)
    limit = device.max_threads_per_block or MAX_THREADS
    if threads > limit:
        return f"{threads} threads > device limit {limit}"
    # Fewer than a warp leaves lanes of the one warp idle; the scheduler still issues a full warp.
    if threads < WARP:
        return f"{threads} threads < one warp ({WARP})"
    return None


def _smem(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    bm, bn, bk, _, _ = _tiles(config)
    need = (bm * bk + bk * bn) * problem.dtype.itemsize
    if need > STATIC_SMEM_LIMIT:
        return f"tiles need {need} B > {STATIC_SMEM_LIMIT} B of static shared memory per block"
    return smem_fits(need, device)


def _tile_loads(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    """gemm.cu static_asserts this: each thread loads the same number of elements of each staged tile."""
    bm, bn, bk, _, _ = _tiles(config)
    threads = block_threads(config)
    for name, size in (("A", bm * bk), ("B", bk * bn)):
        if threads == 0 or size % threads:
            return f"{name} tile of {size} elements does not divide among {threads} threads"
    return None


class CudaGemm(GemmKernel):
    name = "cuda_gemm"
    description = "tiled CUDA C++ GEMM, tile sizes as template parameters, compiled by NVRTC"
    precisions = (Precision.FP32, Precision.FP16)
    device_kinds = ("cuda",)
    predicates = {"threads": _threads, "smem": _smem, "tile_loads": _tile_loads}

    def source_files(self) -> tuple[Path, ...]:
        return (SOURCE, Path(__file__), Path(__file__).with_name("compile.py"))

    def toolchain(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        out = {}
        for package in ("cuda-python", "cuda-bindings", "cuda-core", "torch"):
            try:
                out[package] = version(package)
            except PackageNotFoundError:
                out[package] = "not installed"
        try:
            out["nvrtc"] = nvrtc_version()
        except CandidateError:
            out["nvrtc"] = "not available"
        driver = driver_version()
        if driver:
            out["driver"] = driver
        return out

    precompiles = True

    def precompile(self, problem: Problem, config: Config, device: DeviceProfile) -> None:
        """NVRTC needs no GPU: the cubin lands in the disk cache that :meth:`measure` reads."""
        if device.compute_capability is not None:
            compile_gemm(config, problem.dtype, arch_of(tuple(device.compute_capability)))

    def measure(self, problem: Problem, config: Config, device: DeviceProfile, bench: BenchSettings) -> Measurement:
        gpu = cuda_device()  # a RUNTIME failure, saying why, when there is no GPU
        import torch

        capability = device.compute_capability or torch.cuda.get_device_capability(gpu)
        compiled = compile_gemm(config, problem.dtype, arch_of(tuple(capability)))
        kernel = _load(compiled, gpu)

        d = problem.dims
        m, n, k = d["M"], d["N"], d["K"]
        a = make_operand((m, k), problem.dtype, gpu, seed=0)
        b = make_operand((k, n), problem.dtype, gpu, seed=1)
        c = torch.empty((m, n), dtype=input_dtype(problem.dtype), device=gpu)
        # fp64 on the same (possibly fp16) inputs: exact enough, and unaffected by torch's TF32 settings.
        reference = a.double() @ b.double()
        call = _launcher(kernel, config, a, b, c)
        return measure_on_gpu(
            call,
            reference,
            kernel=self,
            problem=problem,
            device=device,
            bench=bench,
        )


def _load(compiled: Compiled, gpu: torch.device) -> Any:
    """The cuda.core Kernel of a cubin, in torch's (primary) context of ``gpu``."""
    from cuda.core import Device, ObjectCode

    try:
        # cuda.core's Device shares the primary context that torch uses, so pointers and streams agree.
        Device(gpu.index).set_current()
        return ObjectCode.from_cubin(compiled.cubin).get_kernel(compiled.lowered_name)
    except Exception as exc:  # noqa: BLE001 - a cubin the driver rejects (wrong arch, too new) fails the trial
        raise CandidateError(FailureKind.RUNTIME, f"loading the cubin failed: {type(exc).__name__}: {exc}") from exc


def _launcher(kernel: Any, config: Config, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> Any:
    """A call that launches the GEMM on torch's current stream and returns ``c``."""
    import numpy as np
    import torch
    from cuda.core import LaunchConfig, launch

    bm, bn, _, _, _ = _tiles(config)
    m, k = a.shape
    n = b.shape[1]
    grid = (math.ceil(n / bn), math.ceil(m / bm))  # x over columns, like the kernel's blockIdx.x
    launch_config = LaunchConfig(grid=grid, block=block_threads(config))
    # A Python int is passed as a pointer; the dimensions must be 32-bit to match the kernel's `int`.
    args = (a.data_ptr(), b.data_ptr(), c.data_ptr(), np.int32(m), np.int32(n), np.int32(k))
    streams: dict[int, Any] = {}

    def call() -> torch.Tensor:
        # Looked up on every call: measure_on_gpu's CUDA-graph mode captures on a stream of its own.
        launch(_stream(torch.cuda.current_stream().cuda_stream, streams), launch_config, kernel, *args)
        return c

    return call


def _stream(handle: int, streams: dict[int, Any]) -> Any:
    """The cuda.core Stream for a raw stream handle, wrapped once per handle (wrapping costs a few us)."""
    from cuda.core import LEGACY_DEFAULT_STREAM, Stream

    stream = streams.get(handle)
    if stream is None:
        # torch's default stream is the legacy default stream, handle 0 (NULL). cuda.core names that stream by
        # CU_STREAM_LEGACY in a ready-made object, rather than by a borrowed null handle.
        stream = streams[handle] = LEGACY_DEFAULT_STREAM if handle == 0 else Stream.from_handle(handle)
    return stream
