"""Search spaces: parameters and constraints, loaded from ``search_spaces/<kernel>.yaml`` and validated.

Constraints are data (a structured comparison) or a named predicate implemented in the kernel's code;
nothing in a space file is ever evaluated as code.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from cotune.tuner.errors import SpecError
from cotune.tuner.types import Config, DeviceProfile, ParamValue, Precision, Problem
from cotune.tuner.yaml_lines import describe, line_of, load_yaml_file
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

# Known-good seeds take at most this share of a trial budget, so the search keeps most of it.
SEED_SHARE = 0.25
ANY = "any"  # the seeds key for configs of every precision

# A named predicate returns None when the config is fine, else the reason it is infeasible.
Predicate = Callable[[Config, Problem, DeviceProfile], str | None]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
    "!=": operator.ne,
    "divides": lambda a, b: b != 0 and a != 0 and b % a == 0,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ValuesSpec(_Strict):
    values: list[int | float | str | bool] = Field(min_length=1)


class _Pow2Spec(_Strict):
    pow2: tuple[int, int]

    @model_validator(mode="after")
    def _check(self) -> _Pow2Spec:
        lo, hi = self.pow2
        for v in (lo, hi):
            if v <= 0 or v & (v - 1):
                raise ValueError(f"pow2 bounds must be powers of two, got {v}")
        if lo > hi:
            raise ValueError(f"pow2 range is empty: {lo} > {hi}")
        return self


class _ComparisonSpec(_Strict):
    lhs: str | int
    op: Literal["<=", "<", ">=", ">", "==", "!=", "divides"]
    rhs: str | int
    name: str | None = None


class _PredicateSpec(_Strict):
    predicate: str


class _SpaceFile(_Strict):
    kernel: str
    description: str = ""
    params: dict[str, Annotated[_ValuesSpec | _Pow2Spec, Field(union_mode="left_to_right")]] = Field(min_length=1)
    constraints: list[_ComparisonSpec | _PredicateSpec] = []
    # "any": seeds for every precision; a precision's name: seeds tried before those for that precision
    seeds: dict[str, list[dict[str, int | float | str | bool]]] = {}


@dataclass(frozen=True)
class Param:
    name: str
    values: tuple[ParamValue, ...]


@dataclass(frozen=True)
class Comparison:
    """``lhs op rhs`` where each side is a number, a param name, ``problem.<dim>`` or ``device.<field>``."""

    lhs: str | int
    op: str
    rhs: str | int
    label: str

    def violation(self, config: Config, problem: Problem, device: DeviceProfile) -> str | None:
        a = _operand(self.lhs, config, problem, device)
        b = _operand(self.rhs, config, problem, device)
        if _OPS[self.op](a, b):
            return None
        return f"{self.label} violated ({self.lhs}={a}, {self.rhs}={b})"


@dataclass(frozen=True)
class NamedPredicate:
    name: str
    check: Predicate

    def violation(self, config: Config, problem: Problem, device: DeviceProfile) -> str | None:
        reason = self.check(config, problem, device)
        return f"{self.name}: {reason}" if reason else None


Constraint = Comparison | NamedPredicate


def _operand(ref: str | int, config: Config, problem: Problem, device: DeviceProfile) -> float:
    if isinstance(ref, int):
        return ref
    if ref.startswith("problem."):
        return problem.dims[ref.removeprefix("problem.")]
    if ref.startswith("device."):
        return float(getattr(device, ref.removeprefix("device.")))
    value = config[ref]
    if isinstance(value, str):
        raise TypeError(f"constraint operand {ref} is not numeric")
    return float(value)


@dataclass(frozen=True)
class SearchSpace:
    kernel: str
    params: tuple[Param, ...]
    constraints: tuple[Constraint, ...] = ()
    source: str = ""
    # known-good configs (a hand-written autotune list, say), measured first where a problem admits them;
    # each with the precision it is for, or "any"
    seeds: tuple[tuple[str, Config], ...] = ()

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    @property
    def size(self) -> int:
        """Number of points before constraints."""
        return math.prod(len(p.values) for p in self.params)

    def violation(self, config: Config, problem: Problem, device: DeviceProfile) -> str | None:
        """The first constraint the config breaks, as a reason string, or None if it is feasible."""
        for c in self.constraints:
            reason = c.violation(config, problem, device)
            if reason:
                return reason
        return None

    def points(self) -> Iterator[Config]:
        for combo in itertools.product(*(p.values for p in self.params)):
            yield Config.make(dict(zip(self.names, combo, strict=True)))

    def feasible_points(self, problem: Problem, device: DeviceProfile) -> list[Config]:
        return [c for c in self.points() if self.violation(c, problem, device) is None]

    def known_good(self, problem: Problem, device: DeviceProfile, budget: int | None) -> list[Config]:
        """The seeds this problem and device admit, those for its precision before those for any, each in the
        file's order, at most SEED_SHARE of a trial budget."""
        ordered = [c for p, c in self.seeds if p == problem.dtype.value] + [c for p, c in self.seeds if p == ANY]
        seeds = [c for c in dict.fromkeys(ordered) if self.violation(c, problem, device) is None]
        return seeds if budget is None else seeds[: max(1, int(budget * SEED_SHARE))]

    def distributions(self) -> dict[str, BaseDistribution]:
        from optuna.distributions import CategoricalDistribution

        return {p.name: CategoricalDistribution(list(p.values)) for p in self.params}


def load_space(path: Path, *, predicates: Mapping[str, Predicate], shape_dims: Sequence[str] = ()) -> SearchSpace:
    """Load and validate a space file. Errors name the file, the line and the key."""
    data, lines = load_yaml_file(path)
    source = str(path)
    try:
        spec = _SpaceFile.model_validate(data)
    except ValidationError as exc:
        raise describe(exc, source, lines) from None

    params = []
    for name, p in spec.params.items():
        if isinstance(p, _Pow2Spec):
            lo, hi = p.pow2
            values: tuple[ParamValue, ...] = tuple(2**e for e in range(lo.bit_length() - 1, hi.bit_length()))
        else:
            values = tuple(dict.fromkeys(p.values))
        params.append(Param(name, values))

    known = {p.name for p in params}
    constraints: list[Constraint] = []
    for i, c in enumerate(spec.constraints):
        where = f"{source}:{line_of(('constraints', i), lines)}"
        if isinstance(c, _PredicateSpec):
            if c.predicate not in predicates:
                raise SpecError(
                    f"{where}: constraints.{i}.predicate: unknown predicate {c.predicate!r}; "
                    f"known: {', '.join(sorted(predicates)) or 'none'}"
                )
            constraints.append(NamedPredicate(c.predicate, predicates[c.predicate]))
            continue
        for side in (c.lhs, c.rhs):
            if isinstance(side, str) and not _valid_ref(side, known, shape_dims):
                raise SpecError(f"{where}: constraints.{i}: unknown operand {side!r}")
        label = c.name or f"{c.lhs} {c.op} {c.rhs}"
        constraints.append(Comparison(c.lhs, c.op, c.rhs, label))
    seeds = []
    for key, configs in spec.seeds.items():
        if key != ANY and key not in {p.value for p in Precision}:
            known = ", ".join([ANY, *(p.value for p in Precision)])
            raise SpecError(f"{source}:{line_of(('seeds', key), lines)}: seeds.{key}: not a precision; known: {known}")
        for i, seed in enumerate(configs):
            where = f"{source}:{line_of(('seeds', key, i), lines)}: seeds.{key}.{i}"
            seeds.append((key, _seed(seed, params, where)))
    return SearchSpace(spec.kernel, tuple(params), tuple(constraints), source, tuple(seeds))


def _seed(values: dict[str, ParamValue], params: Sequence[Param], where: str) -> Config:
    """A seed names every param once, each with one of that param's values."""
    names = [p.name for p in params]
    missing = [n for n in names if n not in values]
    unknown = [k for k in values if k not in names]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown param {', '.join(unknown)}")
        raise SpecError(f"{where}: {'; '.join(parts)} (a seed gives a value for each of {', '.join(names)})")
    out: dict[str, ParamValue] = {}
    for p in params:
        given = values[p.name]
        # bool is an int to Python (True == 1): match it only to a bool, and store the space's own value
        match = [v for v in p.values if v == given and isinstance(v, bool) == isinstance(given, bool)]
        if not match:
            allowed = ", ".join(map(str, p.values))
            raise SpecError(f"{where}.{p.name}: {given!r} is not one of the space's values [{allowed}]")
        out[p.name] = match[0]
    return Config.make(out)


def _valid_ref(ref: str, params: set[str], shape_dims: Sequence[str]) -> bool:
    if ref.startswith("problem."):
        return not shape_dims or ref.removeprefix("problem.") in shape_dims
    if ref.startswith("device."):
        return ref.removeprefix("device.") in DeviceProfile.__dataclass_fields__
    return ref in params
