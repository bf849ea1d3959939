"""Replay a recorded brute-force data set (a Kernel Tuner cache file) through an Optuna search.

No kernel runs: a proposed config is looked up in the recording. A config absent from the cache lies
outside the constrained space (PRUNED, costs no evaluation); a recorded failure is a FAIL evaluation;
a config seen before costs nothing. Each evaluation charges the recorded compile and benchmark time to a
simulated clock, so wall-time budgets can be replayed too.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cotune.tuner.errors import SpecError
from cotune.tuner.search.samplers import make_sampler
from cotune.tuner.search.stopping import StallDetector

if TYPE_CHECKING:
    from optuna.distributions import CategoricalDistribution

FAILURE_MARKERS = ("CompilationFailedConfig", "RuntimeFailedConfig", "ErrorConfig")
# Kernel Tuner's mark of a config it never launched (more threads per block than the device allows, or a
# restriction): outside the space, as a config absent from the cache is, not a measured failure.
INVALID_MARKER = "InvalidConfig"
# Older Kernel Tuner releases cached a config that failed to compile or run with this time instead of a marker.
OLD_FAILURE_TIME_MS = 1e20
MAX_IDLE_PROPOSALS = 1000


@dataclass(frozen=True)
class Record:
    time_ms: float | None  # None: the config failed
    failure: str | None
    cost_s: float


@dataclass(frozen=True)
class ReplayData:
    name: str
    keys: tuple[str, ...]
    values: dict[str, tuple]
    records: dict[tuple, Record]
    precision: str | None = None  # where the file names it (cotune's own recordings do)
    kernel: str | None = None  # cotune's own recordings name their kernel and problem too
    problem: dict | None = None
    notes: tuple[str, ...] = ()  # what the loader read differently from the file's face value, for the user

    def top(self, n: int) -> list[dict]:
        """The n fastest recorded configs, as param dicts."""
        ok = sorted((r.time_ms, p) for p, r in self.records.items() if r.time_ms is not None)
        return [dict(zip(self.keys, p, strict=True)) for _, p in ok[:n]]

    def subset(self, points: list[tuple]) -> ReplayData:
        """What a study that evaluated only these configs would hold."""
        records = {p: self.records[p] for p in points}
        return dataclasses.replace(self, records=records)

    @property
    def knows_programs(self) -> bool:
        """Whether the file names a registered cotune kernel and its problem, so configs map to programs."""
        from cotune.tuner.measure.registry import kernel_names

        return self.kernel is not None and self.problem is not None and self.kernel in kernel_names()

    def program_key(self) -> Callable[[tuple], str]:
        """A recorded config's program (Kernel.program_key of the kernel and problem the file names), so a
        replay can measure each program once as a study does. A file that names none has no programs: SpecError."""
        if self.kernel is None or self.problem is None:
            raise SpecError(f"{self.name}: names no cotune kernel and problem, so its configs' programs are unknown")
        from cotune.tuner.measure.registry import get_kernel
        from cotune.tuner.types import Config, Problem

        kernel = get_kernel(self.kernel)
        problem = Problem.make(self.kernel, self.problem, self.precision or "fp32")
        return lambda point: kernel.program_key(problem, Config.make(dict(zip(self.keys, point, strict=True))))

    def distributions(self) -> dict[str, CategoricalDistribution]:
        """The search space as Optuna sees it: every param categorical over its recorded values."""
        from optuna.distributions import CategoricalDistribution

        return {k: CategoricalDistribution(list(self.values[k])) for k in self.keys}

    def candidates(self) -> list[dict]:
        """Every recorded config as a param dict: the feasible set a candidate sampler enumerates."""
        return [dict(zip(self.keys, point, strict=True)) for point in self.records]

    def trials(self) -> list[tuple[dict, float | None]]:
        """Every recorded config as (params, time in ms), None for a failure."""
        return [(dict(zip(self.keys, p, strict=True)), r.time_ms) for p, r in self.records.items()]

    @property
    def optimum(self) -> float:
        return min(r.time_ms for r in self.records.values() if r.time_ms is not None)


def _point(config: dict, keys: tuple[str, ...]) -> tuple:
    """A recorded config's values in ``keys`` order. Optuna's categorical choices must be numbers, strings,
    booleans or None, so a list or object value is refused here, where the entry can still be named."""
    point = tuple(config[k] for k in keys)
    for k, v in zip(keys, point, strict=True):
        if not (v is None or isinstance(v, (bool, int, float, str))):
            raise TypeError(f"param {k!r} has the value {v!r}; replay takes numbers, strings and booleans")
    return point


def read_recording_json(path: Path) -> tuple[object, tuple[str, ...]]:
    """A recording's JSON content, and notes on how it was read. A Kernel Tuner cache is written one entry at
    a time and closed only when its run ends, so an interrupted brute-force run leaves it open: it is read
    as Kernel Tuner reads it, closed, and a last entry cut off mid-write is left out."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        text = f.read()
    try:
        return json.loads(text), ()
    except json.JSONDecodeError as exc:
        body = text.rstrip()
        if '"cache": {' not in body or body.endswith(("}\n}", "}}}")):
            raise
        note = "the cache was never closed (an interrupted run); read as Kernel Tuner reads it"
        if not body.endswith((",", "{")):  # its last entry was cut off: every line before that one is whole
            body = body[: body.rfind("\n")]
            note += ", its last entry, cut off mid-write, left out"
        try:
            return json.loads(body.rstrip().rstrip(",") + "}\n}"), (note,)
        except json.JSONDecodeError:
            raise exc from None


def load_kernel_tuner_cache(path: Path, data: object = None, notes: tuple[str, ...] = ()) -> ReplayData:
    """``data``: the file's content when the caller has already read it, ``notes`` how it was read.

    A config is a recorded failure where any of its fields holds a failure marker, as Kernel Tuner reads
    its cache (older releases put the marker in another objective's field, or cached a failure as time
    1e20); one marked InvalidConfig was never launched and lies outside the space."""
    try:
        if data is None:
            data, notes = read_recording_json(path)
        keys = tuple(data["tune_params_keys"])
        values = {k: tuple(data["tune_params"][k]) for k in keys}
        cache = data["cache"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SpecError(f"{path}: not a Kernel Tuner cache file ({type(exc).__name__}: {exc})") from None
    records = {}
    invalid = 0
    for name, entry in cache.items():
        try:
            point = _point(entry, keys)
            marks = {v for v in entry.values() if isinstance(v, str) and v in (*FAILURE_MARKERS, INVALID_MARKER)}
            t = entry["time"]
            cost = (float(entry.get("compile_time", 0)) + float(entry.get("benchmark_time", 0))) / 1e3
            time_ms = None if isinstance(t, str) else float(t)
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"{path}: cache entry {name!r} is malformed ({type(exc).__name__}: {exc})") from None
        if INVALID_MARKER in marks:
            invalid += 1
        elif marks:
            records[point] = Record(None, str(t) if t in marks else min(marks), cost)
        elif time_ms is not None and time_ms >= OLD_FAILURE_TIME_MS:
            reason = f"recorded time {t!r} (older Kernel Tuner's mark of a config that failed to compile or run)"
            records[point] = Record(None, reason, cost)
        elif time_ms is None or not _a_time(time_ms):
            records[point] = Record(None, f"recorded time {t!r}", cost)
        else:
            records[point] = Record(time_ms, None, cost)
    if not any(r.time_ms is not None for r in records.values()):
        raise SpecError(f"{path}: the cache holds no successful measurement")
    if invalid:
        notes += (f"outside the space: {invalid} configs marked InvalidConfig (never launched)",)
    problem = data.get("problem")  # a dict of shape dims in cotune's recordings only (Kernel Tuner's has none)
    kernel = data.get("kernel_name") if isinstance(problem, dict) else None
    return ReplayData(
        path.name, keys, values, records, data.get("precision"), kernel, problem if kernel else None, notes
    )


def _a_time(value: float) -> bool:
    """Whether a recorded number can be a kernel's time. Zero, a negative or an infinite one cannot: a
    kernel that did no work or a broken timer, told as the file's optimum, would make every ratio to it
    meaningless; it is a failed config with its recorded value as the reason."""
    return math.isfinite(value) and value > 0


# T4's "timeunit" names the unit of both the measured objective and the tuning times.
T4_UNITS_TO_MS = {"seconds": 1e3, "milliseconds": 1.0, "miliseconds": 1.0, "microseconds": 1e-3, "nanoseconds": 1e-6}


def load_t4_results(path: Path, data: object = None) -> ReplayData:
    """A T4 results file (the Kernel Tuner community's interchange format, e.g. the BAT benchmark hub's).

    Each result holds a ``configuration``, its ``measurements`` and an ``invalidity``: "correct" is a
    success, "compile" and "runtime" are recorded failures, "constraints" lies outside the space. The
    replayed value is a time, which replay minimises: the result's ``time`` measurement wherever it has one,
    even when the file's objective is another (a throughput); otherwise its first objective, if that is
    measured in a unit of time. A file that measures only something else (GFLOP/s alone) is refused rather
    than minimised. The tuning cost is compilation + validation + the benchmark runtimes, what Kernel
    Tuner's simulation mode charges.
    ``data``: the file's content when the caller has already read it.
    """
    try:
        data = read_recording_json(path)[0] if data is None else data
        results = data["results"]
        unit = T4_UNITS_TO_MS[data.get("metadata", {}).get("timeunit", "milliseconds")]
        keys = tuple(results[0]["configuration"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
        raise SpecError(f"{path}: not a T4 results file ({type(exc).__name__}: {exc})") from None
    records: dict[tuple, Record] = {}
    for n, result in enumerate(results):
        if result.get("invalidity") == "constraints":
            continue
        try:
            point = _point(result["configuration"], keys)
            times = result.get("times", {})
            cost = (
                (times.get("compilation", 0) + times.get("validation", 0) + sum(times.get("runtimes", []))) * unit / 1e3
            )
            measured = {m.get("name"): m for m in result.get("measurements", [])}
            # Replay minimises time: a file whose objective is a throughput (GFLOP/s) still measures time.
            objective = "time" if "time" in measured else (result.get("objectives") or ["time"])[0]
            value = measured.get(objective, {}).get("value")
            objective_unit = measured.get(objective, {}).get("unit")
        except (KeyError, TypeError, AttributeError) as exc:
            raise SpecError(f"{path}: result {n} is malformed ({type(exc).__name__}: {exc})") from None
        if objective != "time" and objective in measured and objective_unit not in T4_UNITS_TO_MS:
            raise SpecError(
                f"{path}: result {n} measures {objective!r} in {objective_unit!r} and no 'time'; "
                "replay minimises a time"
            )
        if result.get("invalidity", "correct") != "correct" or result.get("correctness", 1) == 0:
            reason = value if isinstance(value, str) else f"{result.get('invalidity')} failure"
            records.setdefault(point, Record(None, reason, cost))
        elif isinstance(value, (int, float)) and _a_time(value):
            records.setdefault(point, Record(float(value) * unit, None, cost))
        else:
            records.setdefault(point, Record(None, f"recorded {objective} {value!r}", cost))
    if not any(r.time_ms is not None for r in records.values()):
        raise SpecError(f"{path}: the file holds no successful measurement")
    values = {k: _ordered({p[i] for p in records}) for i, k in enumerate(keys)}
    return ReplayData(path.name, keys, values, records)


def _ordered(values: set) -> tuple:
    try:
        return tuple(sorted(values))
    except TypeError:  # mixed types: any fixed order will do
        return tuple(sorted(values, key=str))


def load_trial_table(path: Path) -> ReplayData:
    """A cotune trial table: the ``trials.csv`` on each study's MLflow parent run (Optuna's trials_dataframe).

    Only what the study measured is known, so the replay explores that subset: configs it never measured
    count as outside the space, and the optimum is the best measured time. Repeats and infeasible
    proposals (PRUNED) are left out; failed trials are recorded failures. The replayed value is each trial's
    measured median time, in milliseconds, whatever the study's objective was.
    """
    import ast
    import csv

    import pandas as pd

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        keys = tuple(sorted(k for k in (rows[0] if rows else {}) if k.startswith("params_")))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not a cotune trial table ({type(exc).__name__}: {exc})") from None
    if not keys or "state" not in rows[0]:
        raise SpecError(f"{path}: not a cotune trial table (no params_* and state columns)")
    records: dict[tuple, Record] = {}
    for row in rows:
        record = ast.literal_eval(row["user_attrs_cotune"]) if row.get("user_attrs_cotune") else {}
        if row["state"] not in ("COMPLETE", "FAIL") or "duplicate_of" in record:
            continue
        if record.get("failure_kind") == "worker_lost":
            continue
        point = tuple(_cell(row[k]) for k in keys)
        cost = pd.to_timedelta(row["duration"]).total_seconds() if row.get("duration") else 0.0
        if row["state"] == "COMPLETE":
            records.setdefault(point, Record(_trial_time_ms(row, record), None, cost))
        else:
            records.setdefault(point, Record(None, record.get("reason", "failed"), cost))
    if not any(r.time_ms is not None for r in records.values()):
        raise SpecError(f"{path}: the table holds no successful trial")
    names = tuple(k.removeprefix("params_") for k in keys)
    values = {n: tuple(dict.fromkeys(p[i] for p in records)) for i, n in enumerate(names)}
    return ReplayData(path.name, names, values, records)


def _trial_time_ms(row: dict, record: dict) -> float:
    """A completed trial's time: its measurement's median, whatever the study's objective (a throughput or
    energy study tells Optuna GFLOP/s or joules); the objective value, as seconds, in a table without one."""
    from cotune.tuner.types import Measurement

    if record.get("measurement"):
        return Measurement.from_json(record["measurement"]).median_s * 1e3
    return float(row.get("value") or row["values_0"]) * 1e3


def load_recording(path: Path) -> ReplayData:
    """A cotune trial table (.csv), or a Kernel Tuner cache or T4 results file (.json, .json.gz)."""
    if path.suffix == ".csv":
        return load_trial_table(path)
    try:
        data, notes = read_recording_json(path)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not a recording ({type(exc).__name__}: {exc})") from None
    if _is_t4_metadata(data):
        raise SpecError(
            f"{path}: a T4 metadata file (the hardware and software of a tuning run), not a recording of it; "
            "replay the T4 results file written beside it (Kernel Tuner names it NAME-results.json)"
        )
    return load_t4_results(path, data) if is_t4(data) else load_kernel_tuner_cache(path, data, notes)


def is_t4(data: object) -> bool:
    """Whether a recording's JSON content is a T4 results file rather than a Kernel Tuner cache."""
    return isinstance(data, dict) and "results" in data and "cache" not in data


def _is_t4_metadata(data: object) -> bool:
    """Whether JSON content is a T4 metadata file (Kernel Tuner's ``store_metadata_file``), which describes a
    tuning run's machine and holds no measurement."""
    return isinstance(data, dict) and isinstance(data.get("metadata"), dict) and not {"results", "cache"} & set(data)


def _cell(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


@dataclass
class ReplayResult:
    optimum: float
    best_so_far: list[float | None] = field(default_factory=list)
    failed: int = 0
    pruned: int = 0
    duplicates: int = 0
    simulated_time_s: float = 0.0
    evaluated: list[tuple] = field(default_factory=list)  # the distinct configs, in order of evaluation

    def evaluations_to_within(self, fraction: float) -> int | None:
        """1-based count of evaluations until best <= optimum * (1 + fraction); None if never."""
        for i, best in enumerate(self.best_so_far, 1):
            if best is not None and best <= self.optimum * (1 + fraction):
                return i
        return None

    def improvements(self) -> list[tuple[int, float]]:
        """(1-based evaluation, best so far) wherever the best so far changed: the curve, step by step."""
        steps: list[tuple[int, float]] = []
        for i, best in enumerate(self.best_so_far, 1):
            if best is not None and (not steps or best < steps[-1][1]):
                steps.append((i, best))
        return steps

    def to_json(self) -> dict:
        return {
            "optimum": self.optimum,
            "best_so_far": self.best_so_far,
            "evaluations": len(self.best_so_far),
            "failed": self.failed,
            "pruned": self.pruned,
            "duplicates": self.duplicates,
            "simulated_time_s": self.simulated_time_s,
            "evaluations_to_within": {f"{p}%": self.evaluations_to_within(p / 100) for p in (5, 2, 1)},
        }


def replay(
    data: ReplayData,
    *,
    sampler: str = "tpe",
    budget: int = 200,
    seed: int | None = None,
    wall_time_s: float | None = None,
    sampler_options: dict | None = None,
    priors: list[dict] | None = None,
    patience: int | None = None,
    related: list[ReplayData] | None = None,
    same_program: bool = False,
) -> ReplayResult:
    """``priors``: configs to evaluate first (winners on another GPU or problem), as ``enqueue_trial`` does
    in a real study; each costs an evaluation like any other, and ones outside this space are skipped.
    ``related``: recordings of the same kernel elsewhere, whose times the ``cotune`` sampler uses as a model
    feature (``sampler.transfer`` in a real study); they cost no evaluations.
    ``patience``: stop after that many evaluations without a 1 % gain, as ``budget.patience`` does.
    ``same_program``: measure each program once, as a study does (``Kernel.program_key``; the recording
    must name its cotune kernel and problem): a config whose program was measured gets that measurement,
    costs no evaluation, and the sampler's candidates hold one config per program."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = data.distributions()
    program: Callable[[tuple], object] = data.program_key() if same_program else (lambda point: point)
    programs: dict[object, tuple] = {}
    for point in data.records:
        programs.setdefault(program(point), point)
    study = optuna.create_study(
        direction="minimize",
        sampler=make_sampler(
            sampler,
            seed,
            candidates=[dict(zip(data.keys, point, strict=True)) for point in programs.values()],
            distributions=dists,
            options=sampler_options,
            related=[other.trials() for other in related or []],
        ),
    )
    for prior in priors or []:
        if tuple(prior.get(k) for k in data.keys) in data.records:
            study.enqueue_trial({k: prior[k] for k in data.keys}, skip_if_exists=True)
    result = ReplayResult(data.optimum)
    stall = StallDetector(patience) if patience else None
    seen: dict[object, Record] = {}  # by program
    best: float | None = None
    idle = 0
    budget = min(budget, len(programs))
    while len(result.best_so_far) < budget and idle < MAX_IDLE_PROPOSALS:
        if wall_time_s is not None and result.simulated_time_s >= wall_time_s:
            break
        trial = study.ask(dists)
        point = tuple(trial.params[k] for k in data.keys)
        record = data.records.get(point)
        if record is None:
            trial.set_constraint("feasible", 1.0)
            study.tell(trial, state=TrialState.PRUNED)
            result.pruned += 1
            idle += 1
            continue
        key = program(point)
        duplicate = key in seen
        if duplicate:
            record = seen[key]
            result.duplicates += 1
            idle += 1
        else:
            seen[key] = record
            result.evaluated.append(point)
            idle = 0
            result.simulated_time_s += record.cost_s
        if record.time_ms is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, record.time_ms)
        if duplicate:
            continue
        if record.time_ms is None:
            result.failed += 1
        else:
            best = record.time_ms if best is None else min(best, record.time_ms)
        result.best_so_far.append(best)
        if stall is not None and stall.update(best):
            break
    return result
