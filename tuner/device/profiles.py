"""Device profiles for the machine the tuner runs on."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from cotune.tuner.errors import CotuneError
from cotune.tuner.types import DeviceProfile

_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def _cpu_caches() -> dict[int, int]:
    sizes: dict[int, int] = {}
    if not _CACHE_DIR.is_dir():
        return sizes
    for index in _CACHE_DIR.glob("index*"):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = _parse_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified"):
            sizes[level] = size
    return sizes


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def cpu_profile() -> DeviceProfile:
    caches = _cpu_caches()
    return DeviceProfile(
        name=_cpu_name(),
        kind="cpu",
        cores=len(os.sched_getaffinity(0)),
        l1_bytes=caches.get(1, 32 * 1024),
        l2_bytes=caches.get(2, 1024 * 1024),
        extra={"machine": platform.machine(), "l3_bytes": str(caches.get(3, 0))},
    )


def detect(kind: str = "cpu") -> DeviceProfile:
    """Profile of the local device of the given kind: ``cpu``, or ``cuda`` (CUDA device 0 of this process)."""
    if kind == "cpu":
        return cpu_profile()
    if kind == "cuda":
        from cotune.tuner.device.cuda import cuda_profile

        return cuda_profile(0)
    raise CotuneError(f"unknown device kind {kind!r}; known: cpu, cuda")


def device_for(kernel_name: str, device_kinds: tuple[str, ...]) -> DeviceProfile:
    """The local device a kernel runs on: CUDA device 0 when the kernel runs on GPUs and one is here, else
    the CPU when the kernel runs there too, else a clear error."""
    if "cuda" in device_kinds:
        try:
            return detect("cuda")
        except CotuneError as exc:
            if CPU_KIND not in device_kinds:
                raise CotuneError(f"kernel {kernel_name} runs on {', '.join(device_kinds)} only: {exc}") from None
    return cpu_profile()


PROFILES_DIR = Path(__file__).with_name("recorded")


def recorded_profile(name: str) -> DeviceProfile:
    """A device profile saved as ``tuner/device/recorded/<slug>.json`` (for planning and tests off the GPU)."""
    path = PROFILES_DIR / f"{slugify(name)}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.json")))
        raise CotuneError(f"no recorded device profile {path.name}; known: {known}")
    return DeviceProfile.from_json(json.loads(path.read_text()))


CPU_KIND = "cpu"


def hardware_kind(device: DeviceProfile) -> str:
    """The hardware a job targets and a worker serves: ``cpu``, or the GPU's name as a slug."""
    return CPU_KIND if device.kind == "cpu" else device.slug


def queue_name(kind: str) -> str:
    return f"cotune.{kind}"


def gpu_name(index: int) -> str:
    """The name NVML gives GPU ``index`` (a physical index, as ``--gpu`` and CUDA_VISIBLE_DEVICES use)."""
    try:
        import pynvml
    except ImportError:
        raise CotuneError("a GPU worker needs nvidia-ml-py: pip install 'cotune[gpu]'") from None
    try:
        pynvml.nvmlInit()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
    except pynvml.NVMLError as exc:
        raise CotuneError(f"cannot read GPU {index} through NVML: {exc}") from None
    return name.decode() if isinstance(name, bytes) else name


def slugify(name: str) -> str:
    return DeviceProfile(name=name, kind="cuda").slug
