"""CUDA device profiles, read with cuda-python's driver API and NVML, with the peak table attached."""

from __future__ import annotations

from cotune.tuner.device.gpu_specs import lookup
from cotune.tuner.errors import CotuneError
from cotune.tuner.types import DeviceProfile


def _driver_attrs(index: int) -> tuple[str, dict[str, int]]:
    from cuda.bindings import driver as cu

    def ok(result: tuple) -> object:
        err, *rest = result
        if err != cu.CUresult.CUDA_SUCCESS:
            raise CotuneError(f"CUDA driver call failed for device {index}: {err.name}")
        return rest[0] if len(rest) == 1 else rest

    ok(cu.cuInit(0))
    dev = ok(cu.cuDeviceGet(index))
    name = ok(cu.cuDeviceGetName(128, dev)).split(b"\0", 1)[0].decode()
    A = cu.CUdevice_attribute
    wanted = {
        "cc_major": "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR",
        "cc_minor": "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR",
        "sm_count": "CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT",
        "smem_optin": "CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN",
        "threads": "CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK",
        "registers": "CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK",
        "l2": "CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE",
        "clock_khz": "CU_DEVICE_ATTRIBUTE_CLOCK_RATE",
        "mem_clock_khz": "CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE",
    }
    attrs = {}
    for key, attr in wanted.items():
        if hasattr(A, attr):  # clock attributes are deprecated in CUDA 13 and may disappear
            err, value = cu.cuDeviceGetAttribute(getattr(A, attr), dev)
            if err == cu.CUresult.CUDA_SUCCESS:
                attrs[key] = int(value)
    return name, attrs


def _nvml_extra(index: int) -> dict[str, float | str]:
    """Power limit, max SM clock and UUID from NVML, for the CUDA device ``index`` (matched by PCI bus id)."""
    try:
        import pynvml
        from cuda.bindings import driver as cu

        _, dev = cu.cuDeviceGet(index)
        _, bus = cu.cuDeviceGetPCIBusId(32, dev)
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus.split(b"\0", 1)[0].decode())
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        return {
            "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3,
            "max_sm_clock_mhz": float(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)),
            "uuid": uuid.decode() if isinstance(uuid, bytes) else uuid,
        }
    except Exception:  # noqa: BLE001 - NVML is optional: a profile without power data still tunes
        return {}


def cuda_profile(index: int = 0) -> DeviceProfile:
    try:
        name, a = _driver_attrs(index)
    except ImportError:
        raise CotuneError("CUDA device profiles need cuda-python: pip install 'cotune[gpu]'") from None
    except CotuneError:
        raise
    except Exception as exc:  # noqa: BLE001 - no driver library, no device: one clear message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CotuneError(f"no usable NVIDIA GPU (CUDA device {index}): {first}") from None
    nvml = _nvml_extra(index)
    spec = lookup(name)
    clock = int(nvml.get("max_sm_clock_mhz", 0)) or a.get("clock_khz", 0) // 1000
    return DeviceProfile(
        name=name,
        kind="cuda",
        cores=a.get("sm_count", 0),
        l2_bytes=a.get("l2", 0),
        shared_mem_per_block=a.get("smem_optin", 0),
        max_threads_per_block=a.get("threads", 0),
        registers_per_block=a.get("registers", 0),
        sm_count=a.get("sm_count", 0),
        compute_capability=(a.get("cc_major", 0), a.get("cc_minor", 0)),
        clock_mhz=clock,
        mem_clock_mhz=a.get("mem_clock_khz", 0) // 1000,
        power_limit_w=float(nvml.get("power_limit_w", 0.0)),
        peak_flops=dict(spec.peak_flops) if spec else {},
        mem_bandwidth=spec.mem_bandwidth if spec else 0.0,
        extra={
            "uuid": str(nvml.get("uuid", "")),
            "peak_source": spec.source if spec else "unknown GPU: no peak table entry",
            "profile_source": "cuda-python driver API + NVML",
        },
    )
