"""What every GPU kernel's ``measure`` shares: the CUDA device, dtypes per precision, fp8 quantisation and
the tolerance each precision is held to. Imports torch lazily so kernel classes stay importable anywhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cotune.tuner.errors import CotuneError
from cotune.tuner.measure.kernel import BenchSettings, CandidateError, Kernel
from cotune.tuner.types import DeviceProfile, FailureKind, Measurement, Precision, Problem

if TYPE_CHECKING:
    import torch

# Max error relative to the reference's largest magnitude. fp32 is IEEE (no tf32); tf32 keeps 10 mantissa
# bits; fp16/bf16 outputs are rounded to 11/8 bits; fp8 is compared with a reference computed from the
# same quantised inputs, so only accumulation order and the bf16 output rounding remain.
TOLERANCE: dict[Precision, float] = {
    Precision.FP32: 1e-4,
    Precision.TF32: 5e-3,
    Precision.FP16: 1e-2,
    Precision.BF16: 3e-2,
    Precision.FP8: 3e-2,
    Precision.FP8_BLOCK128: 3e-2,
}

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def cuda_device() -> torch.device:
    """The current CUDA device, or a RUNTIME failure that says why there is none."""
    import torch

    if not torch.cuda.is_available():
        raise CandidateError(FailureKind.RUNTIME, "this kernel needs an NVIDIA GPU; torch sees no CUDA device")
    return torch.device("cuda", torch.cuda.current_device())


def input_dtype(precision: Precision) -> torch.dtype:
    import torch

    return {
        Precision.FP32: torch.float32,
        Precision.TF32: torch.float32,
        Precision.FP16: torch.float16,
        Precision.BF16: torch.bfloat16,
        Precision.FP8: torch.float8_e4m3fn,
        Precision.FP8_BLOCK128: torch.float8_e4m3fn,
    }[precision]


def output_dtype(precision: Precision) -> torch.dtype:
    """fp8 GEMMs write bf16, as the fp8 paths of vLLM and SGLang do; the rest write their input type."""
    import torch

    return torch.bfloat16 if precision.is_fp8 else input_dtype(precision)


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scaled e4m3: returns (q, scale) with ``x ~= q.float() * scale``."""
    import torch

    scale = (x.abs().amax().float() / FP8_MAX).clamp(min=1e-12)
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale.reshape(1)


def make_operand(shape: tuple[int, ...], precision: Precision, device: torch.device, seed: int) -> torch.Tensor:
    """A random operand in the precision's input type (fp8 unscaled; use :func:`quantize_fp8` for scales)."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    return x if precision.is_fp8 else x.to(input_dtype(precision))


def measure_on_gpu(
    call: Callable[[], torch.Tensor],
    reference: torch.Tensor,
    *,
    kernel: Kernel,
    problem: Problem,
    device: DeviceProfile,
    bench: BenchSettings,
    fp32_reference: torch.Tensor | None = None,
) -> Measurement:
    """Run once and check against ``reference`` at the problem precision's tolerance, then time (and
    optionally read energy) on the GPU; flops and bytes come from the kernel's cost model.

    ``fp32_reference``, computed from the inputs before they were rounded to the precision, gives the
    error a job's accuracy bound is held to when ``reference`` is not that (fp8, bf16 inputs).

    A Triton compile error or a launch that asks for more resources than the device has is a COMPILE
    failure; a CUDA error (illegal address, misaligned access, ...) poisons the CUDA context, so it is a
    RUNTIME failure that also restarts the candidate process.
    """
    import torch
    from cotune.kernels.gpu_timing import energy_per_call, time_gpu
    from cotune.kernels.verify import check, max_rel_error

    try:
        out = call()
        torch.cuda.synchronize()
        err = check(out.float().cpu().numpy(), reference.float().cpu().numpy(), TOLERANCE[problem.dtype])
        fp32_err = None
        if fp32_reference is not None:
            fp32_err = max_rel_error(out.float().cpu().numpy(), fp32_reference.float().cpu().numpy())
        times = time_gpu(call, device, bench)
        energy = energy_per_call(call, sorted(times)[len(times) // 2]) if bench.energy else 0.0
    except CandidateError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified below, never swallowed
        raise _classify(exc) from exc
    return Measurement(times, kernel.flops(problem), kernel.bytes_moved(problem), err, energy, fp32_err)


def _summary(exc: Exception) -> str:
    """``Type: first line of the message`` (the type alone when there is no message)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:400] if text else type(exc).__name__}"


def compile_failure(exc: Exception) -> CandidateError:
    """A compiler exception as this config's COMPILE failure."""
    return CandidateError(FailureKind.COMPILE, _summary(exc))


def _classify(exc: Exception) -> CandidateError:
    name = type(exc).__name__
    if name in ("CompilationError", "OutOfResources", "PTXASError"):
        return compile_failure(exc)
    summary = _summary(exc)
    if "CUDA" in summary or "cuda" in name.lower() or "AcceleratorError" in name:
        return CandidateError(FailureKind.RUNTIME, summary, restart=True)
    return CandidateError(FailureKind.RUNTIME, summary)


def triton_toolchain() -> dict[str, str]:
    """Versions that decide what a Triton config compiles to and how it runs: Triton, torch, and the CUDA
    runtime and driver when present (recorded with every study and export, compared by revalidate)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    # Triton's version from its metadata, not by importing it: Triton reads TRITON_INTERPRET when it is first
    # imported, and a candidate process that runs a kernel on the CPU sets it only when it measures (a process
    # started ahead asks for the toolchain before that).
    try:
        triton = version("triton")
    except PackageNotFoundError:
        # torch's CPU build does not bring Triton, and the Triton kernels need it even under its interpreter
        raise CotuneError(
            "this kernel needs Triton, which is not installed: pip install 'cotune[gpu]' (or pip install triton)"
        ) from None
    out = {"triton": triton, "torch": torch.__version__}
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    driver = driver_version()
    if driver:
        out["driver"] = driver
    return out


def driver_version() -> str | None:
    """The NVIDIA driver version from NVML, or None without a driver (a CPU-only machine)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # noqa: BLE001 - no NVML library or no driver: nothing to record
        return None
    return version.decode() if isinstance(version, bytes) else version
