"""The contract every tunable kernel implements. Kernels live in the ``kernels`` package.

A kernel object is stateless and cheap to construct; :meth:`Kernel.measure` runs in an isolated child
process (see :mod:`cotune.tuner.measure.isolation`), so it may crash or hang without taking the tuner down.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from cotune.tuner.space.search_space import Predicate, SearchSpace, load_space
from cotune.tuner.types import Config, DeviceProfile, FailureKind, Measurement, Precision, Problem

SEARCH_SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"


@dataclass(frozen=True)
class BenchSettings:
    """How hard to time a candidate.

    ``repeats`` is the minimum number of timed calls; GPU kernels time more calls, up to ``max_repeats``,
    until ``target_s`` of kernel time is spent (a 10 us kernel needs thousands of calls for a stable median,
    a 10 ms one a few). ``graph`` captures calls in a CUDA graph so launch overhead does not swamp tiny
    kernels; ``energy`` adds an energy-per-call reading from the GPU's counter (a loop of at least 1 s).

    Screening (GPU stopwatch): when ``screen_cutoff_s`` is set, calls worth ``screen_target_s`` of kernel
    time are timed first, and only a candidate whose median is at most the cutoff gets the ``target_s``
    timing; a slower one keeps its short timing. The study's objective sets the cutoff per trial to the
    best median so far times ``1 + screen_margin``; a re-measure leaves it unset. ``screen_target_s`` 0
    turns screening off. At the measured per-call spreads (H100 recordings: 0.4-2 % interquartile range
    over the median, bench/results/replay_h100), 5 ms of calls put a median within about 0.3 %, far inside
    the 10 % margin (bench/screening.py, bench/results/screening_h100.json).
    """

    warmup: int = 1
    repeats: int = 5
    timeout_s: float = 60.0
    target_s: float = 0.1
    max_repeats: int = 1000
    graph: bool = False
    energy: bool = False
    screen_target_s: float = 0.005
    screen_margin: float = 0.1
    screen_cutoff_s: float | None = None


class CandidateError(Exception):
    """Raised inside :meth:`Kernel.measure` for an expected failure; becomes a FAIL trial with a reason.

    ``restart`` asks for a fresh candidate process after this one, for failures that leave the process
    unusable (a CUDA error poisons its context for every later launch).
    """

    def __init__(self, kind: FailureKind, message: str, *, restart: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.restart = restart


class Kernel(ABC):
    """A tunable kernel: its problem shape, its cost model, and how to measure one config."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    shape_dims: ClassVar[tuple[str, ...]]
    flag_dims: ClassVar[tuple[str, ...]] = ()  # shape dims that are switches (0 or 1), e.g. attention's causal
    batch_dim: ClassVar[str]  # the dimension serving looks up by nearest value (vLLM's rule for M)
    precisions: ClassVar[tuple[Precision, ...]]
    device_kinds: ClassVar[tuple[str, ...]] = ("cpu",)
    predicates: ClassVar[Mapping[str, Predicate]] = {}
    precompiles: ClassVar[bool] = False  # whether :meth:`precompile` does anything worth a compile pool

    @abstractmethod
    def flops(self, problem: Problem) -> float: ...

    @abstractmethod
    def bytes_moved(self, problem: Problem) -> float: ...

    @abstractmethod
    def source_files(self) -> tuple[Path, ...]:
        """Files whose content defines the kernel; their hash keys cached results and MLflow runs."""

    @abstractmethod
    def toolchain(self) -> dict[str, str]:
        """Versions of whatever turns a config into machine code (compiler, torch, ...)."""

    @abstractmethod
    def measure(self, problem: Problem, config: Config, device: DeviceProfile, bench: BenchSettings) -> Measurement:
        """Build, verify against the reference, then time. Raise :class:`CandidateError` on failure."""

    def precompile(self, problem: Problem, config: Config, device: DeviceProfile) -> None:
        """Compile a config into the compiler's cache ahead of :meth:`measure`, in a separate process, so the
        GPU is not idle while the next candidate compiles. Raise :class:`CandidateError` for a config that
        does not compile. Kernels that compile nothing ahead keep this no-op."""
        return None

    def program_key(self, problem: Problem, config: Config) -> str:
        """Equal for configs that run the same program on this problem, so a study measures one of them and
        gives the others its result instead of spending GPU time and budget on a copy. Default: the config
        itself. Override only where the kernel's code makes two configs compute identically."""
        return config.key

    def baselines(self, problem: Problem, device: DeviceProfile) -> dict[str, Config]:
        """Configs a serving engineer compares a tuned winner with, by name (for example the config a server
        falls back to without a tuned file, or the one its shipped file gives for this shape).

        The driver measures them beside the winner, on the same device and with the same settings, so a
        report can show tuned against each. A baseline may lie outside the search space (a server's default
        need not be a grid point): :meth:`measure` must accept it wherever it is a valid config for the
        kernel. A name is absent when the kernel has no such config for this problem and device (no shipped
        file for the shape); never a placeholder. Must not touch the device (it runs wherever the driver
        plans). Default: no baselines."""
        return {}

    @cached_property
    def source_hash(self) -> str:
        h = hashlib.sha256()
        for path in self.source_files():
            h.update(path.read_bytes())
        return h.hexdigest()[:16]

    def space(self, directory: Path = SEARCH_SPACES_DIR) -> SearchSpace:
        return load_space(directory / f"{self.name}.yaml", predicates=self.predicates, shape_dims=self.shape_dims)
