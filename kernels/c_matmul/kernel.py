"""``c_matmul``: a tiled fp32 matmul in C, compiled per config by the system C compiler, called via ctypes."""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from cotune.kernels.gemm import GemmKernel
from cotune.kernels.timing import time_calls
from cotune.kernels.verify import check
from cotune.tuner.measure.kernel import BenchSettings, CandidateError
from cotune.tuner.types import Config, DeviceProfile, FailureKind, Measurement, Precision, Problem

SOURCE = Path(__file__).with_name("matmul.c")
LOOP_ORDERS = {"ikj": 0, "ijk": 1, "kij": 2}
CFLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=c11")
_DEFINE = re.compile(r"^[A-Z][A-Z0-9_]*$")
TOLERANCE = 1e-4


def _tiles_fit_l2(config: Config, problem: Problem, device: DeviceProfile) -> str | None:
    """The three tiles a tile step touches must fit in the per-core L2, or the tiling buys nothing."""
    tm, tn, tk = (int(config[k]) for k in ("TILE_M", "TILE_N", "TILE_K"))
    need = 4 * (tm * tk + tk * tn + tm * tn)
    return None if need <= device.l2_bytes else f"tiles need {need} B > L2 {device.l2_bytes} B"


def _compiler() -> str:
    return os.environ.get("CC", "cc")


class CMatmul(GemmKernel):
    name = "c_matmul"
    description = "tiled fp32 matmul in C (system compiler, ctypes)"
    precisions = (Precision.FP32,)
    predicates = {"tiles_fit_l2": _tiles_fit_l2}

    def source_files(self) -> tuple[Path, ...]:
        return (SOURCE, Path(__file__))

    def toolchain(self) -> dict[str, str]:
        out = subprocess.run([_compiler(), "--version"], capture_output=True, text=True, check=False)
        return {"cc": out.stdout.splitlines()[0] if out.stdout else _compiler(), "cflags": " ".join(CFLAGS)}

    def defines(self, config: Config) -> list[str]:
        flags = []
        for name, value in config.params:
            if name == "LOOP_ORDER":
                value = LOOP_ORDERS.get(str(value), value)
            if not _DEFINE.match(name) or not isinstance(value, int) or isinstance(value, bool):
                raise CandidateError(FailureKind.COMPILE, f"bad define {name}={value!r}")
            flags.append(f"-D{name}={value}")
        return flags

    def compile(self, config: Config) -> Path:
        """Compile (or reuse) the shared library for a config; the cache key is source + flags."""
        cmd = [_compiler(), *CFLAGS, *self.defines(config)]
        digest = hashlib.sha256((" ".join(cmd) + SOURCE.read_text()).encode()).hexdigest()[:20]
        build = Path(tempfile.gettempdir()) / "cotune-build"
        build.mkdir(exist_ok=True)
        lib = build / f"c_matmul-{digest}.so"
        if lib.exists():
            return lib
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        proc = subprocess.run([*cmd, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise CandidateError(FailureKind.COMPILE, proc.stderr.strip()[-500:] or "compiler failed")
        tmp.replace(lib)
        return lib

    def precompile(self, problem: Problem, config: Config, device: DeviceProfile) -> None:
        """Builds the shared library into the build cache. Not enabled by default (``precompiles`` stays
        False): on a CPU the compiler would share cores with the candidate being timed."""
        self.compile(config)

    def measure(self, problem: Problem, config: Config, device: DeviceProfile, bench: BenchSettings) -> Measurement:
        lib = ctypes.CDLL(str(self.compile(config)))
        fn = lib.matmul
        ptr = ctypes.POINTER(ctypes.c_float)
        fn.argtypes = [ptr, ptr, ptr, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        fn.restype = None

        d = problem.dims
        rng = np.random.default_rng(0)
        a = rng.uniform(-1, 1, (d["M"], d["K"])).astype(np.float32)
        b = rng.uniform(-1, 1, (d["K"], d["N"])).astype(np.float32)
        c = np.empty((d["M"], d["N"]), dtype=np.float32)
        args = (a.ctypes.data_as(ptr), b.ctypes.data_as(ptr), c.ctypes.data_as(ptr), d["M"], d["N"], d["K"])

        fn(*args)
        err = check(c, a.astype(np.float64) @ b.astype(np.float64), TOLERANCE)
        times = time_calls(lambda: fn(*args), warmup=bench.warmup, repeats=bench.repeats)
        return Measurement(times, self.flops(problem), self.bytes_moved(problem), err)
