"""Job specs: what to tune, on which problems, for how long. Loaded from YAML, validated with pydantic."""

from __future__ import annotations

import enum
import itertools
import math
from pathlib import Path
from typing import Any, Literal

from cotune.tuner.errors import CotuneError, SpecError
from cotune.tuner.measure.kernel import BenchSettings
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.types import Objective, Precision, Problem
from cotune.tuner.yaml_lines import describe, load_yaml, load_yaml_file
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Every number in a spec is finite and bounded, so that no value can overflow a timer, a database interval
# or a loop (a service takes specs from the network). The bounds are far beyond any real job; the service
# adds its own, tighter limits (docs/service.md).
MAX_SECONDS = 30 * 86400.0
MAX_TRIALS = 1_000_000
MAX_REPEATS = 100_000
MAX_DIM = 2**31 - 1  # kernels index with 32-bit integers
MAX_VALUES = 4096  # values of one list-valued shape dim
MAX_PROBLEMS = 100_000  # problems a spec may expand to; counted before expanding
MAX_SEED = 2**32 - 1  # numpy's seeds
MAX_SPEC_BYTES = 10_000_000


def _seconds(default: float | None, description: str | None = None, upper: float = MAX_SECONDS) -> Any:
    return Field(default=default, gt=0, le=upper, allow_inf_nan=False, strict=True, description=description)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(_Strict):
    trials: StrictInt | None = Field(default=None, gt=0, le=MAX_TRIALS, description="measured trials per problem")
    wall_time_s: float | None = _seconds(None, "wall time per problem")
    patience: StrictInt | None = Field(
        default=None,
        gt=0,
        le=MAX_TRIALS,
        description="stop a problem after this many measured trials without a 1 % gain",
    )
    table_patience: StrictInt | None = Field(
        default=None,
        gt=0,
        le=MAX_TRIALS,
        description="tune the batch sizes of each shape as a table: smallest and largest first, then the middles;"
        " a batch size where its tuned neighbours' winners time within 2 % of each other stops after this many"
        " measured trials without a 1 % gain",
    )

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.trials is None and self.wall_time_s is None:
            raise ValueError("give trials, wall_time_s, or both")
        return self


class SamplerSpec(_Strict):
    name: Literal["cotune", "tpe", "tpe-mv", "random", "gp", "cmaes"] = "cotune"
    seed: StrictInt | None = Field(default=None, ge=0, le=MAX_SEED)
    transfer: Literal[True, False, "winner", "model"] = Field(
        default=True,
        description="warm starts from other shapes of this kernel in the same storage. winner: measure first"
        " the nearest shape's winner; model: the cotune sampler models this shape's times from the nearest"
        " shapes' trials; true: both; false: neither",
    )

    @property
    def transfer_winner(self) -> bool:
        return self.transfer is True or self.transfer == "winner"

    @property
    def transfer_model(self) -> bool:
        return self.transfer is True or self.transfer == "model"


class BenchSpec(_Strict):
    warmup: StrictInt = Field(default=1, ge=0, le=MAX_REPEATS)
    repeats: StrictInt = Field(default=5, ge=1, le=MAX_REPEATS)
    timeout_s: float = _seconds(60.0, "per candidate: compile, verify and time it within this", upper=86400.0)
    remeasure_repeats: StrictInt = Field(default=15, ge=1, le=MAX_REPEATS)
    target_ms: float = Field(
        default=100.0,
        gt=0,
        le=60_000,
        allow_inf_nan=False,
        strict=True,
        description="GPU: kernel time to spend on timed repeats",
    )
    max_repeats: StrictInt = Field(default=1000, ge=1, le=MAX_REPEATS)
    cuda_graph: bool = Field(default=False, strict=True, description="GPU: time calls replayed from a CUDA graph")
    compile_workers: StrictInt = Field(
        default=2, ge=0, le=64, description="processes compiling upcoming candidates while one is timed (0: off)"
    )

    def settings(self, *, energy: bool = False) -> BenchSettings:
        return BenchSettings(
            warmup=self.warmup,
            repeats=self.repeats,
            timeout_s=self.timeout_s,
            target_s=self.target_ms / 1e3,
            max_repeats=max(self.max_repeats, self.repeats, self.remeasure_repeats),
            graph=self.cuda_graph,
            energy=energy,
        )


class Policy(enum.StrEnum):
    """Which point of a time-and-energy Pareto front is exported (:mod:`cotune.tuner.codesign.pareto`)."""

    FASTEST = "fastest"
    MOST_EFFICIENT = "most_efficient"
    FASTEST_WITHIN_ENERGY = "fastest_within_energy"


class SelectionSpec(_Strict):
    """Which config of a time-and-energy Pareto front is exported."""

    policy: Policy = Policy.FASTEST
    energy_slack: float = Field(
        default=0.1,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="fastest_within_energy: energy at most (1 + slack) x the front's lowest",
    )


# Strict: a YAML ``true`` is no shape (pydantic would read it as 1).
ShapeValue = StrictInt | list[StrictInt]


class JobSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    kernel: str
    problems: list[dict[str, ShapeValue]] = Field(min_length=1, max_length=MAX_PROBLEMS)
    precisions: list[Precision] = Field(default=[Precision.FP32], min_length=1, max_length=16)
    objective: Objective = Objective.MIN_TIME
    accuracy_bound: float | None = Field(
        default=None,
        gt=0,
        le=1e6,
        allow_inf_nan=False,
        description="max relative error against fp32 a precision may have; the fastest precision within it wins",
    )
    budget: Budget
    selection: SelectionSpec = SelectionSpec()
    sampler: SamplerSpec = SamplerSpec()
    top_k: StrictInt = Field(default=3, ge=1, le=1000)
    bench: BenchSpec = BenchSpec()
    search_space: Path | None = Field(default=None, description="space file overriding search_spaces/")
    storage: str | None = Field(default=None, max_length=2000, description="Optuna storage URL (local runs only)")
    mlflow_tracking_uri: str | None = Field(default=None, max_length=2000, description="(local runs only)")

    @field_validator("kernel")
    @classmethod
    def _known_kernel(cls, name: str) -> str:
        try:
            get_kernel(name)
        except CotuneError as exc:
            raise ValueError(str(exc)) from None
        return name

    @field_validator("problems")
    @classmethod
    def _positive(cls, problems: list[dict[str, ShapeValue]], info: ValidationInfo) -> list[dict[str, ShapeValue]]:
        flags = get_kernel(info.data["kernel"]).flag_dims if "kernel" in info.data else ()
        for i, shape in enumerate(problems):
            for dim, value in shape.items():
                values = value if isinstance(value, list) else [value]
                flag = dim in flags
                if not values or any(v not in (0, 1) if flag else not 0 < v <= MAX_DIM for v in values):
                    need = "0 or 1" if flag else f"a positive integer up to {MAX_DIM} or a non-empty list of them"
                    raise ValueError(f"problems.{i}.{dim} must be {need}")
                if len(values) > MAX_VALUES:
                    raise ValueError(f"problems.{i}.{dim}: {len(values)} values, more than {MAX_VALUES}")
        return problems

    @model_validator(mode="after")
    def _fits_kernel(self) -> JobSpec:
        kernel = get_kernel(self.kernel)
        for i, shape in enumerate(self.problems):
            missing = set(kernel.shape_dims) - set(shape)
            extra = set(shape) - set(kernel.shape_dims)
            if missing or extra:
                raise ValueError(
                    f"problems.{i}: {self.kernel} takes dims {', '.join(kernel.shape_dims)}"
                    + (f"; missing {', '.join(sorted(missing))}" if missing else "")
                    + (f"; unknown {', '.join(sorted(extra))}" if extra else "")
                )
        if self.objective.uses_energy and "cuda" not in kernel.device_kinds:
            raise ValueError(
                f"objective {self.objective.value} needs energy readings (NVML), which only GPU kernels take; "
                f"{self.kernel} runs on {', '.join(kernel.device_kinds)}"
            )
        if self.objective.multi and self.budget.patience is not None:
            raise ValueError("budget.patience: early stop follows one objective; drop it for time_and_energy")
        if self.objective.multi and self.budget.table_patience is not None:
            raise ValueError("budget.table_patience: early stop follows one objective; drop it for time_and_energy")
        if self.selection != SelectionSpec() and not self.objective.multi:
            raise ValueError("selection: a policy picks from a Pareto front; set objective: time_and_energy")
        if self.problem_count() > MAX_PROBLEMS:
            raise ValueError(f"problems: expand to {self.problem_count():,} problems, more than {MAX_PROBLEMS:,}")
        bad = [p.value for p in self.precisions if p not in kernel.precisions]
        if bad:
            raise ValueError(
                f"precisions: {self.kernel} supports {', '.join(p.value for p in kernel.precisions)}, "
                f"not {', '.join(bad)}"
            )
        return self

    def problem_count(self) -> int:
        """How many problems :meth:`expand` makes at most, computed without making them (duplicates count)."""
        return len(self.precisions) * sum(
            math.prod(len(v) if isinstance(v, list) else 1 for v in shape.values()) for shape in self.problems
        )

    def expand(self) -> list[Problem]:
        """Cross product of every list-valued shape field, times the precisions, in spec order."""
        out: list[Problem] = []
        for shape in self.problems:
            dims = list(shape)
            axes = [v if isinstance(v, list) else [v] for v in shape.values()]
            for combo in itertools.product(*axes):
                for precision in self.precisions:
                    out.append(Problem.make(self.kernel, dict(zip(dims, combo, strict=True)), precision))
        return list(dict.fromkeys(out))


def parse_spec(text: str, source: str = "<spec>", base_dir: Path | None = None) -> JobSpec:
    data, lines = load_yaml(text, source)
    return _validate(data, lines, source, base_dir)


def load_spec(path: Path) -> JobSpec:
    try:
        if path.is_file() and path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(f"{path}: {path.stat().st_size:,} bytes; a job spec is at most {MAX_SPEC_BYTES:,}")
        data, lines = load_yaml_file(path)
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not a text file (byte {exc.start} is not UTF-8); a job spec is YAML") from None
    return _validate(data, lines, str(path), path.parent)


def _validate(data: object, lines: dict, source: str, base_dir: Path | None) -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job spec is a YAML mapping (name, kernel, problems, budget, ...)")
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise describe(exc, source, lines) from None
    if spec.search_space is not None and base_dir is not None and not spec.search_space.is_absolute():
        spec = spec.model_copy(update={"search_space": base_dir / spec.search_space})
    return spec
