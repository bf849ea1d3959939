"""Stale-config check: re-measure exported winners on the current toolchain and device, report regressions,
and re-tune only the regressed problems, warm-started from their old winners.

Tuned configs go stale when the compiler changes (SGLang users lost most tuned configs on a Triton
upgrade) and Triton's own cache re-tunes everything when one config is added; this re-runs only what got
slower by more than the threshold.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cotune.tuner.measure.isolation import CandidateRunner, Request
from cotune.tuner.measure.kernel import BenchSettings
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.track.tracker import Tracker
from cotune.tuner.types import Config, DeviceProfile, Failure, Problem


class CheckStatus(enum.StrEnum):
    OK = "ok"
    REGRESSED = "regressed"
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

    @property
    def change(self) -> float | None:
        """Relative change in time (+0.10 = 10 % slower)."""
        return None if self.new_time_s is None else self.new_time_s / self.old_time_s - 1

    @property
    def needs_retune(self) -> bool:
        return self.status in (CheckStatus.REGRESSED, CheckStatus.FAILED)


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
            out = runner.run(Request(problem, config, device, bench))
            if isinstance(out, Failure):
                status, new, reason = CheckStatus.FAILED, None, str(out)
            else:
                new = out.median_s
                regressed = new > old * (1 + threshold)
                status = CheckStatus.REGRESSED if regressed else CheckStatus.OK
                reason = f"{new / old - 1:+.1%} against the exported time" if regressed else ""
            checks.append(Check(problem, config, device.name, old, new, status, reason, changes))
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
    job: str, stale: list[Check], trials: int, storage_url: str, new_tracker: Callable[[], Tracker]
) -> Iterator[str]:
    """Re-tune the stale problems as job ``<job>-revalidated``: one job spec per (kernel, precision), each
    problem warm-started from its old winner, each logged by a fresh tracker (tune_job closes it). Yields a
    line per spec before tuning it."""
    from cotune.tuner.device.profiles import device_for
    from cotune.tuner.driver import tune_job
    from cotune.tuner.spec.job import JobSpec

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
        yield f"re-tuning {len(checks)} {kernel} {dtype} problem(s), old winners first"
        device = device_for(kernel, get_kernel(kernel).device_kinds)
        tune_job(spec, storage_url, device, new_tracker(), priors=retune_priors(checks))
