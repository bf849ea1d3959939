"""Run-time compilation of ``gemm.cu`` with NVRTC, one template instantiation per config, cached on disk.

NVRTC needs no GPU and no driver: it turns CUDA C++ into a cubin for a named architecture (``sm_90``), so
configs can be compiled (and compile errors found) on a CPU-only machine. Only ``cuda.bindings.nvrtc`` is
used here; loading and launching the cubin is :mod:`cotune.kernels.cuda_gemm.kernel`'s job.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from cotune.tuner.measure.kernel import CandidateError
from cotune.tuner.types import Config, FailureKind, Precision

SOURCE = Path(__file__).with_name("gemm.cu")
TILE_PARAMS = ("BM", "BN", "BK", "TM", "TN")
CXX_TYPE = {Precision.FP32: "float", Precision.FP16: "__half"}
# ptxas -v puts registers, spills and shared memory per kernel in the log, which Compiled keeps.
BASE_OPTIONS = ("-std=c++17", "--ptxas-options=-v")
FP16_HEADER = "cuda_fp16.h"
MESSAGE_CHARS = 1500  # how much of the NVRTC log a failed trial keeps


@dataclass(frozen=True)
class Compiled:
    cubin: bytes
    lowered_name: str  # the mangled symbol of the instantiation, what the module loader looks up
    log: str
    cached: bool  # True when read back from the disk cache rather than compiled now


def build_dir() -> Path:
    return Path(tempfile.gettempdir()) / "cotune-build"


def name_expression(config: Config, precision: Precision) -> str:
    """The instantiation to compile, e.g. ``gemm<float, 64, 64, 8, 4, 4>``."""
    if precision not in CXX_TYPE:
        raise CandidateError(FailureKind.COMPILE, f"cuda_gemm has no {precision.value} variant")
    tiles = []
    for name in TILE_PARAMS:
        value = config[name]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CandidateError(FailureKind.COMPILE, f"{name}={value!r} is not a positive integer")
        tiles.append(str(value))
    return f"gemm<{CXX_TYPE[precision]}, {', '.join(tiles)}>"


def arch_of(compute_capability: tuple[int, int]) -> str:
    major, minor = compute_capability
    return f"sm_{major}{minor}"


def nvrtc_version() -> str:
    """NVRTC's ``major.minor``; also the first call that loads NVRTC, so a missing library fails here."""
    try:
        from cuda.bindings import nvrtc

        _, major, minor = nvrtc.nvrtcVersion()
    except (ImportError, RuntimeError) as exc:  # no cuda-bindings, or it cannot find libnvrtc
        raise CandidateError(FailureKind.COMPILE, f"NVRTC is unavailable: {exc}") from exc
    return f"{major}.{minor}"


@cache
def fp16_include_dir() -> Path | None:
    """A directory holding ``cuda_fp16.h``, which NVRTC does not ship with.

    Tried in order: the CUDA runtime headers cuda.pathfinder finds (an NVIDIA wheel, conda, CUDA_HOME or a
    system toolkit), then the copy Triton bundles (installed with the ``gpu`` extra, so always there).
    """
    for found in (_pathfinder_headers(), _triton_headers()):
        if found is not None and (found / FP16_HEADER).is_file():
            return found
    return None


def _pathfinder_headers() -> Path | None:
    try:
        from cuda.pathfinder import locate_nvidia_header_directory
    except ImportError:
        return None
    located = locate_nvidia_header_directory("cudart")
    return Path(located.abs_path) if located is not None else None


def _triton_headers() -> Path | None:
    # find_spec locates the package without importing it (importing Triton takes about a second).
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "backends" / "nvidia" / "include"


def compile_options(precision: Precision, arch: str) -> list[str]:
    # A real architecture (sm_XX, not compute_XX) makes NVRTC run ptxas and emit a cubin, so register and
    # shared-memory limits are checked here, at compile time, rather than at launch.
    options = [f"--gpu-architecture={arch}", *BASE_OPTIONS]
    if precision is Precision.FP16:
        include = fp16_include_dir()
        if include is None:
            raise CandidateError(
                FailureKind.COMPILE,
                f"fp16 needs {FP16_HEADER}, which NVRTC does not ship; no CUDA headers found "
                "(install nvidia-cuda-runtime or a CUDA toolkit, or set CUDA_HOME)",
            )
        options += ["-DCOTUNE_FP16", f"-I{include}"]
    return options


def compile_gemm(config: Config, precision: Precision, arch: str, *, cache_dir: Path | None = None) -> Compiled:
    """The cubin of ``gemm.cu`` instantiated for ``config`` and ``precision``, compiled for ``arch``.

    Cached under ``cache_dir`` (default :func:`build_dir`) by the hash of source, instantiation, options
    and NVRTC version; a compile error raises a COMPILE :class:`CandidateError` carrying NVRTC's message.
    """
    expression = name_expression(config, precision)
    options = compile_options(precision, arch)
    source = SOURCE.read_text()
    key = "\n".join([source, expression, *options, f"nvrtc {nvrtc_version()}"])
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    directory = cache_dir or build_dir()
    cached = _read_cache(directory, digest)
    if cached is not None:
        return cached
    compiled = _nvrtc_compile(source, expression, options)
    _write_cache(directory, digest, compiled)
    return compiled


def _nvrtc_compile(source: str, expression: str, options: list[str]) -> Compiled:
    from cuda.bindings import nvrtc

    prog = _check(nvrtc.nvrtcCreateProgram(source.encode(), SOURCE.name.encode(), 0, [], []))
    try:
        _check(nvrtc.nvrtcAddNameExpression(prog, expression.encode()))
        encoded = [o.encode() for o in options]
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(encoded), encoded)
        log = _program_log(prog)
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CandidateError(FailureKind.COMPILE, f"NVRTC {result.name} for {expression}: {_summary(log)}")
        lowered = _check(nvrtc.nvrtcGetLoweredName(prog, expression.encode()))
        size = _check(nvrtc.nvrtcGetCUBINSize(prog))
        cubin = b" " * size
        _check(nvrtc.nvrtcGetCUBIN(prog, cubin))
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    name = lowered.decode() if isinstance(lowered, bytes) else str(lowered)
    return Compiled(cubin, name, log, cached=False)


def _check(ret: tuple[Any, ...]) -> Any:
    """Unwrap a cuda.bindings return tuple ``(status, *values)``; a failing status is a COMPILE failure."""
    from cuda.bindings import nvrtc

    status, *values = ret
    if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, text = nvrtc.nvrtcGetErrorString(status)
        raise CandidateError(FailureKind.COMPILE, f"NVRTC {status.name}: {text.decode(errors='replace')}")
    return values[0] if len(values) == 1 else None


def _program_log(prog: Any) -> str:
    from cuda.bindings import nvrtc

    size = _check(nvrtc.nvrtcGetProgramLogSize(prog))
    buf = b" " * size
    _check(nvrtc.nvrtcGetProgramLog(prog, buf))
    return buf.rstrip(b"\x00").decode(errors="replace").strip()


def _summary(log: str) -> str:
    """The error lines of a log (what a reader needs first), else its tail; at most MESSAGE_CHARS."""
    errors = [line.strip() for line in log.splitlines() if "error" in line]
    text = "\n".join(errors) if errors else log
    return text[-MESSAGE_CHARS:] or "no log"


def _read_cache(directory: Path, digest: str) -> Compiled | None:
    cubin, meta = directory / f"cuda_gemm-{digest}.cubin", directory / f"cuda_gemm-{digest}.json"
    # The cubin is written last, so its presence means the metadata is complete.
    if not cubin.is_file():
        return None
    info = json.loads(meta.read_text())
    return Compiled(cubin.read_bytes(), info["lowered_name"], info["log"], cached=True)


def _write_cache(directory: Path, digest: str, compiled: Compiled) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"lowered_name": compiled.lowered_name, "log": compiled.log})
    # Write-then-rename, so a concurrent reader never sees a half-written file.
    for suffix, data in ((".json", meta.encode()), (".cubin", compiled.cubin)):
        path = directory / f"cuda_gemm-{digest}{suffix}"
        tmp = path.with_suffix(f"{suffix}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
