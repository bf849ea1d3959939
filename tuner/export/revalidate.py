"""Stale-config check: re-measure exported winners on the current toolchain and device, report regressions,
and re-tune only the regressed problems, warm-started from their old winners.

Tuned configs go stale when the compiler changes (SGLang users lost most tuned configs on a Triton
upgrade) and Triton's own cache re-tunes everything when one config is added; this re-runs only what got
slower by more than the threshold.

A timing differs from run to run, and on a busy machine by tens of percent, so a slowdown counts as a
regression only beyond the timing's noise: each config is measured in several rounds, and the noise is the
larger of the export's spread, the spread now and how far the rounds' medians lie apart. Slower than the
threshold but within that noise is reported as such and not re-tuned. After a re-tune, the old and the new
winner are measured in alternating rounds, so a drift of the machine's state hits both alike.
"""

from __future__ import annotations

import enum
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cotune.tuner.measure.isolation import CandidateRunner, Request
from cotune.tuner.measure.kernel import BenchSettings
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.track.tracker import Tracker
from cotune.tuner.types import Config, DeviceProfile, Failure, Measurement, Problem

ROUNDS = 3  # measurements of each config, their medians compared to tell noise from a change


class CheckStatus(enum.StrEnum):
    OK = "ok"
    REGRESSED = "regressed"
    NOISE = "noise"  # slower than the threshold, but within the timing's measured noise: not re-tuned
    FAILED = "failed"  # the old config no longer compiles, verifies or runs: a regression too
    SKIPPED = "skipped"  # tuned on another device


@dataclass(frozen=True)
class Check:
    problem: Problem
    config: Config
    device: str
    old_time_s: float
    new_time_s: float | None
    status: CheckStatus
    reason: str = ""
    toolchain_changes: tuple[str, ...] = ()
    noise: float | None = None  # relative: how much the timing moves with nothing changed

    @property
    def change(self) -> float | None:
        """Relative change in time (+0.10 = 10 % slower)."""
        return None if self.new_time_s is None else self.new_time_s / self.old_time_s - 1

    @property
    def needs_retune(self) -> bool:
        return self.status in (CheckStatus.REGRESSED, CheckStatus.FAILED)


@dataclass(frozen=True)
class Rounds:
    """Several measurements of one config: their pooled median and how far their medians lie apart."""

    medians: tuple[float, ...]
    spread: float  # the largest interquartile spread of a round (relative)

    @property
    def median_s(self) -> float:
        return statistics.median(self.medians)

    @property
    def noise(self) -> float:
        return max(self.spread, (max(self.medians) - min(self.medians)) / min(self.medians))


def measure_rounds(runner: CandidateRunner, requests: list[Request], rounds: int = ROUNDS) -> list[Rounds | Failure]:
    """Measure each request ``rounds`` times, the requests alternating within each round (A B A B ...), so a
    change of the machine's state between rounds reaches every config alike."""
    got: list[list[Measurement]] = [[] for _ in requests]
    failures: list[Failure | None] = [None] * len(requests)
    for _ in range(rounds):
        for i, request in enumerate(requests):
            if failures[i] is not None:
                continue
            out = runner.run(request)
            if isinstance(out, Failure):
                failures[i] = out
            else:
                got[i].append(out)
    return [failures[i] or Rounds(tuple(m.median_s for m in ms), max(m.spread for m in ms)) for i, ms in enumerate(got)]


def revalidate(export: dict[str, Any], device: DeviceProfile, bench: BenchSettings, threshold: float) -> list[Check]:
    """Re-measure every exported config that was tuned on this device; others are reported as skipped."""
    checks = []
    with CandidateRunner() as runner:
        for e in export["entries"]:
            problem = Problem.make(e["kernel"], e["shape"], e["dtype"])
            config = Config.make(e["config"])
            old = float(e["metrics"]["time_s"])
            changes = _toolchain_changes(e.get("toolchain", {}), get_kernel(problem.kernel).toolchain())
            if e["device"]["name"] != device.name:
                reason = f"tuned on {e['device']['name']}, this is {device.name}"
                checks.append(Check(problem, config, e["device"]["name"], old, None, CheckStatus.SKIPPED, reason))
                continue
            (out,) = measure_rounds(runner, [Request(problem, config, device, bench)])
            if isinstance(out, Failure):
                checks.append(Check(problem, config, device.name, old, None, CheckStatus.FAILED, str(out), changes))
                continue
            new = out.median_s
            noise = max(out.noise, float(e["metrics"].get("spread", 0.0)))
            change = new / old - 1
            if change <= threshold:
                status, reason = CheckStatus.OK, ""
            elif change <= noise:
                status, reason = CheckStatus.NOISE, f"{change:+.1%}, within the timing's noise of ±{noise:.0%}"
            else:
                status, reason = CheckStatus.REGRESSED, f"{change:+.1%} against the exported time (noise ±{noise:.0%})"
            checks.append(Check(problem, config, device.name, old, new, status, reason, changes, noise))
    return checks


def _toolchain_changes(old: dict[str, str], new: dict[str, str]) -> tuple[str, ...]:
    return tuple(
        f"{k} {old.get(k, '-')} -> {new.get(k, '-')}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
    )


def revalidate_here(export: dict[str, Any], threshold: float) -> list[Check]:
    """:func:`revalidate` for every kernel of an export, each on the local device it runs on."""
    from cotune.tuner.device.profiles import device_for
    from cotune.tuner.spec.job import BenchSpec

    checks: list[Check] = []
    for name in sorted({e["kernel"] for e in export["entries"]}):
        part = {**export, "entries": [e for e in export["entries"] if e["kernel"] == name]}
        device = device_for(name, get_kernel(name).device_kinds)
        checks += revalidate(part, device, BenchSpec().settings(), threshold)
    return checks


def retune_priors(checks: list[Check]) -> dict[str, list[Config]]:
    """The old winner of each problem to re-tune, to be measured first."""
    return {c.problem.key: [c.config] for c in checks if c.needs_retune}


def retune(
    job: str,
    stale: list[Check],
    trials: int,
    storage_url: str,
    new_tracker: Callable[[], Tracker],
    on_progress: Callable[[Any], None] | None = None,
) -> Iterator[str]:
    """Re-tune the stale problems as job ``<job>-revalidated``: one job spec per (kernel, precision), each
    problem warm-started from its old winner, each logged by a fresh tracker (tune_job closes it). Yields a
    line before tuning each spec and, after it, one per problem: the new winner against the old one,
    measured in alternating rounds."""
    from cotune.tuner.device.profiles import device_for
    from cotune.tuner.driver import tune_job
    from cotune.tuner.spec.job import BenchSpec, JobSpec

    groups: dict[tuple[str, str], list[Check]] = {}
    for c in stale:
        groups.setdefault((c.problem.kernel, c.problem.dtype.value), []).append(c)
    for (kernel, dtype), checks in groups.items():
        spec = JobSpec.model_validate(
            {
                "name": f"{job}-revalidated",
                "kernel": kernel,
                "problems": [c.problem.dims for c in checks],
                "precisions": [dtype],
                "budget": {"trials": trials},
            }
        )
        yield f"re-tuning {len(checks)} {kernel} {dtype} problem(s) as job {spec.name}, old winners first"
        device = device_for(kernel, get_kernel(kernel).device_kinds)
        outcomes = tune_job(spec, storage_url, device, new_tracker(), on_progress, priors=retune_priors(checks))
        old = {c.problem.key: c.config for c in checks}
        bench = BenchSpec().settings()
        with CandidateRunner() as runner:
            for o in outcomes:
                if o.best is None:
                    yield f"{o.problem.key}: no config measured; the old one stays"
                    continue
                if o.best.config == old[o.problem.key]:
                    yield f"{o.problem.key}: the old winner is still the best"
                    continue
                pair = [Request(o.problem, cfg, device, bench) for cfg in (old[o.problem.key], o.best.config)]
                before, after = measure_rounds(runner, pair)
                yield _compared(o.problem.key, before, after)


def _compared(key: str, before: Rounds | Failure, after: Rounds | Failure) -> str:
    if isinstance(after, Failure):
        return f"{key}: the new winner failed when measured again: {after}"
    if isinstance(before, Failure):
        return f"{key}: new winner {after.median_s * 1e3:.4g} ms; the old one fails here: {before}"
    gain = before.median_s / after.median_s
    noise = max(before.noise, after.noise)
    verdict = "faster" if gain - 1 > noise else "no faster beyond the noise"
    return (
        f"{key}: new winner {after.median_s * 1e3:.4g} ms against the old {before.median_s * 1e3:.4g} ms, "
        f"measured alternately: {gain:.2f}x, {verdict} (noise ±{noise:.0%})"
    )
