"""Typed values that cross module boundaries: problems, configs, measurements, device profiles."""

from __future__ import annotations

import enum
import json
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

ParamValue = int | float | str | bool


class Precision(enum.StrEnum):
    FP32 = "fp32"
    TF32 = "tf32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"  # e4m3 with per-tensor scales (vLLM's fp8_w8a8: one activation scale, one weight scale per expert)
    # e4m3 with block scales (vLLM's fp8_w8a8 with block_shape [128, 128], DeepSeek-V3 and the Qwen3 FP8
    # checkpoints): a weight scale per 128 x 128 block, an activation scale per token and group of 128 along K
    FP8_BLOCK128 = "fp8_block128"

    @property
    def itemsize(self) -> int:
        """Bytes per element in memory (tf32 is fp32 storage with reduced-precision math)."""
        return {Precision.FP8: 1, Precision.FP8_BLOCK128: 1, Precision.FP16: 2, Precision.BF16: 2}.get(self, 4)

    @property
    def is_fp8(self) -> bool:
        """e4m3 operands, whatever the scale granularity: needs fp8 tensor cores (compute capability 8.9+)."""
        return self in (Precision.FP8, Precision.FP8_BLOCK128)


class Objective(enum.StrEnum):
    MIN_TIME = "min_time"
    MAX_THROUGHPUT = "max_throughput"
    MIN_ENERGY = "min_energy"  # joules per call (GPU energy counter)
    TIME_AND_ENERGY = "time_and_energy"  # both: an Optuna multi-objective study, a Pareto front

    @property
    def uses_energy(self) -> bool:
        return self in (Objective.MIN_ENERGY, Objective.TIME_AND_ENERGY)

    @property
    def multi(self) -> bool:
        return self is Objective.TIME_AND_ENERGY


class TrialStatus(enum.StrEnum):
    OK = "ok"
    FAIL = "fail"
    PRUNED = "pruned"


class FailureKind(enum.StrEnum):
    """Why a candidate produced no valid measurement."""

    INFEASIBLE = "infeasible"  # a constraint rejected it before compiling
    COMPILE = "compile_error"
    WRONG_RESULT = "wrong_result"
    RUNTIME = "runtime_error"
    TIMEOUT = "timeout"
    CRASH = "crash"
    IN_FLIGHT = "in_flight"  # another worker is measuring the same config (service mode)
    # the worker died mid-trial, or its task was cut by the time limit; the trial is failed, its ticket re-run
    WORKER_LOST = "worker_lost"


@dataclass(frozen=True)
class Problem:
    """One thing to tune: a kernel on a concrete shape and precision."""

    kernel: str
    shape: tuple[tuple[str, int], ...]
    dtype: Precision

    @classmethod
    def make(cls, kernel: str, shape: Mapping[str, int], dtype: Precision | str) -> Problem:
        return cls(kernel, tuple(sorted((k, int(v)) for k, v in shape.items())), Precision(dtype))

    @property
    def dims(self) -> dict[str, int]:
        return dict(self.shape)

    @property
    def key(self) -> str:
        """Canonical string, stable across runs: ``kernel:K=..,M=..,N=..:dtype``."""
        return f"{self.kernel}:{','.join(f'{k}={v}' for k, v in self.shape)}:{self.dtype.value}"

    def to_json(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "shape": self.dims, "dtype": self.dtype.value}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Problem:
        return cls.make(data["kernel"], data["shape"], data["dtype"])


@dataclass(frozen=True)
class Config:
    """A point of a search space: parameter name to value, kept sorted for a stable key."""

    params: tuple[tuple[str, ParamValue], ...]

    @classmethod
    def make(cls, params: Mapping[str, ParamValue]) -> Config:
        return cls(tuple(sorted(params.items())))

    @property
    def values(self) -> dict[str, ParamValue]:
        return dict(self.params)

    @property
    def key(self) -> str:
        return json.dumps(self.values, sort_keys=True)

    def __getitem__(self, name: str) -> ParamValue:
        return self.values[name]


@dataclass(frozen=True)
class Measurement:
    """Timings of one candidate. Times are seconds per call, one entry per timed repeat."""

    times_s: tuple[float, ...]
    flops: float = 0.0
    bytes_moved: float = 0.0
    max_rel_error: float = 0.0
    energy_j: float = 0.0  # joules per call from the GPU's energy counter; 0 when not measured
    # Error against an fp32 computation on the unrounded inputs, where the kernel's own check uses another
    # reference (fp8 is checked against the same quantised inputs); None: max_rel_error already is that.
    fp32_error: float | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def p99_s(self) -> float:
        """99th percentile of the repeats (for serving kernels, whose repeats are request latencies)."""
        ordered = sorted(self.times_s)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    @property
    def spread(self) -> float:
        """Relative spread: interquartile range / median over the repeats.

        Not (max - min): one slow call among 15 of a sub-millisecond kernel (a page fault, a timer tick)
        would read as several hundred percent and hide whether the timing is actually stable.
        """
        if len(self.times_s) < 2 or self.median_s <= 0:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times_s, n=4)
        return (q3 - q1) / self.median_s

    @property
    def accuracy_error(self) -> float:
        """Max relative error against fp32: what a job's accuracy bound is compared with."""
        return self.max_rel_error if self.fp32_error is None else self.fp32_error

    @property
    def gflops(self) -> float:
        return self.flops / self.median_s / 1e9 if self.median_s > 0 else 0.0

    @property
    def gbytes_per_s(self) -> float:
        return self.bytes_moved / self.median_s / 1e9 if self.median_s > 0 else 0.0

    def metrics(self) -> dict[str, float]:
        return {
            "time_s": self.median_s,
            "time_min_s": min(self.times_s),
            "time_p99_s": self.p99_s,
            "spread": self.spread,
            "gflops": self.gflops,
            "gbytes_per_s": self.gbytes_per_s,
            "max_rel_error": self.max_rel_error,
            "fp32_error": self.accuracy_error,
            "repeats": float(len(self.times_s)),
            **({"energy_j": self.energy_j} if self.energy_j > 0 else {}),
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Measurement:
        return cls(
            times_s=tuple(data["times_s"]),
            flops=data.get("flops", 0.0),
            bytes_moved=data.get("bytes_moved", 0.0),
            max_rel_error=data.get("max_rel_error", 0.0),
            energy_j=data.get("energy_j", 0.0),
            fp32_error=data.get("fp32_error"),
        )


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    message: str

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}"


@dataclass(frozen=True)
class DeviceProfile:
    """What constraints and rooflines need to know about the hardware a study runs on."""

    name: str
    kind: str  # "cpu" or "cuda"
    cores: int = 1
    l1_bytes: int = 0
    l2_bytes: int = 0
    shared_mem_per_block: int = 0  # on a GPU, the opt-in maximum a kernel may request
    max_threads_per_block: int = 0
    registers_per_block: int = 0
    sm_count: int = 0
    compute_capability: tuple[int, int] | None = None
    clock_mhz: int = 0
    mem_clock_mhz: int = 0
    power_limit_w: float = 0.0
    peak_flops: Mapping[str, float] = field(default_factory=dict)
    mem_bandwidth: float = 0.0
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def supports_fp8(self) -> bool:
        """fp8 (e4m3/e5m2) tensor-core math starts with Ada and Hopper, compute capability 8.9."""
        return self.compute_capability is not None and tuple(self.compute_capability) >= (8, 9)

    @property
    def slug(self) -> str:
        """Lower-case, dash-separated name, used for queue and study names."""
        out = "".join(c if c.isalnum() else "-" for c in self.name.lower())
        return "-".join(p for p in out.split("-") if p)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["peak_flops"] = dict(self.peak_flops)
        data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeviceProfile:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if fields.get("compute_capability") is not None:
            fields["compute_capability"] = tuple(fields["compute_capability"])
        return cls(**fields)
