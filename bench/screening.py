"""Does the screening stopwatch keep the winner while it cuts the timing cost? Offline, on every H100 recording.

    python bench/screening.py [--data bench/results/replay_h100] [--seeds 5] [--budget 100]
                              [--out bench/results/screening_h100.json]

A real search (the cotune sampler, one config per program, ``--budget`` evaluations, then the top-3 re-measure
of ``tune_job``) runs on each recording four ways: every candidate timed to ``target_ms`` (today's default,
100 ms, at least 5 and at most 1,000 calls), the same with other noise draws (the control: how far noise
alone moves a winner), and screened (``BenchSettings.screen_target_s`` of calls first; the full timing only
within ``screen_margin`` of the best so far) at two settings. The screened arms see the same noise draws
as the first for the same config and kind of timing, so they differ from it only by what screening changes.

What the recordings hold: per config the median of 10 to 200 timed calls, their count, and the
interquartile range over the median ("spread"); not the calls themselves. So the timing noise is modelled,
not replayed: a median of n calls reads ``true x (1 + e)``, e normal with variance ``run^2 + (0.93 s / sqrt(n))^2``,
where s is the config's recorded spread (0.93 s / sqrt(n) is the standard error of a median of n normal calls
whose interquartile range is s) and ``run`` the run-to-run spread of one config's 200-call median, read from
the 3 shuffled rounds of bench/experiments/results/launch_bound_h100.json (head start on). The recorded median is taken
as the true time. A bias between short and long timings (clocks, caches) cannot be seen offline;
bench/gpu_evidence.py's stopwatch step measures it on a GPU.

Timing cost per measurement: ``fixed + calls x (kernel + flush + 2 host)``, the head-start stopwatch's GPU
timeline (the GPU idles twice the host's queueing time before each batch). fixed (15 ms: operands, check,
warm-up) is the intercept of the first-stopwatch recordings' measurement times over their call counts (10.4
and 21.9 ms); flush is 2 x L2 at the H100's bandwidth (31 us); host (0.18 ms per call) is the median left over
in the head-start recordings' measurement times with that fixed part. Compiling and checking a candidate are
not in it: screening changes neither.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cotune.tuner.search.replay import ReplayData, load_recording  # noqa: E402
from cotune.tuner.search.samplers import make_sampler  # noqa: E402

FIXED_S = 0.015
FLUSH_S = 2 * 52_428_800 / 3.35e12
HOST_S = 0.18e-3
MEDIAN_SE = 1.2533 / 1.349  # standard error of a median of n normal draws, per unit IQR, times sqrt(n)
TOP_K, REPEATS, REMEASURE_REPEATS, TARGET_S, MAX_REPEATS = 3, 5, 15, 0.1, 1000


@dataclass(frozen=True)
class Arm:
    name: str
    screen_s: float = 0.0  # 0: no screening
    margin: float = 0.1
    noise: int = 0  # another noise draw: the control for what noise alone does to a winner


ARMS = (
    Arm("full"),
    Arm("full, another noise draw", noise=1000),
    Arm("screen 5 ms, 10 %", 0.005, 0.10),
    Arm("screen 2 ms, 5 %", 0.002, 0.05),
)


def calls(budget_s: float, t: float, repeats: int = REPEATS) -> int:
    return min(max(repeats, math.ceil(budget_s / t)), MAX_REPEATS)


def cost(n: int, t: float) -> float:
    return n * (t + FLUSH_S + 2 * HOST_S)


def run_spread(path: Path) -> float:
    """Median relative standard deviation of one config's 200-call median over 3 rounds (head start on)."""
    rows = json.loads(path.read_text())["rows"]
    rounds: dict[tuple, list[float]] = {}
    for r in rows:
        if r["head_start"] == "on":
            rounds.setdefault((r["file"], r["load"], json.dumps(r["config"], sort_keys=True)), []).append(
                r["median_ms"]
            )
    return statistics.median(statistics.stdev(v) / statistics.mean(v) for v in rounds.values() if len(v) > 1)


class Stopwatch:
    """Noisy medians, the same draw for the same (seed, config, kind of timing) in every arm."""

    def __init__(self, spreads: dict[tuple, float], run: float, seed: int) -> None:
        self.spreads, self.run, self.seed = spreads, run, seed

    def median(self, point: tuple, t: float, n: int, kind: str) -> float:
        digest = hashlib.sha256(repr((self.seed, point, kind)).encode()).digest()
        z = np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal()
        sd = math.sqrt(self.run**2 + (MEDIAN_SE * self.spreads[point] / math.sqrt(n)) ** 2)
        return t * (1 + sd * z)


def search(data: ReplayData, watch: Stopwatch, arm: Arm, seed: int, budget: int) -> dict:
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    program = data.program_key()
    firsts: dict[str, tuple] = {}
    for point in data.records:
        firsts.setdefault(program(point), point)
    dists = data.distributions()
    sampler = make_sampler(
        "cotune", seed, candidates=[dict(zip(data.keys, p, strict=True)) for p in firsts.values()], distributions=dists
    )
    study = optuna.create_study(direction="minimize", sampler=sampler)
    told: dict[str, float | None] = {}
    observed: dict[tuple, float] = {}
    per_trial: list[float] = []
    best, full, n_calls = None, 0, 0
    for _ in range(20 * budget):
        if len(told) >= min(budget, len(firsts)):
            break
        trial = study.ask(dists)
        point = tuple(trial.params[k] for k in data.keys)
        record = data.records.get(point)
        if record is None:
            study.tell(trial, state=TrialState.PRUNED)
            continue
        key = program(point)
        if key in told:
            value = told[key]
            study.tell(trial, value) if value is not None else study.tell(trial, state=TrialState.FAIL)
            continue
        if record.time_ms is None:
            told[key] = None
            study.tell(trial, state=TrialState.FAIL)
            continue
        t = record.time_ms / 1e3
        spent, n_long, value = FIXED_S, calls(TARGET_S, t), None
        if arm.screen_s > 0 and best is not None:
            n_short = calls(arm.screen_s, t)
            spent, n_calls = spent + cost(n_short, t), n_calls + n_short
            short = watch.median(point, t, n_short, "short")
            if short > best * (1 + arm.margin):
                value = short  # screened out: keeps its short timing
        if value is None:
            value = watch.median(point, t, n_long, "long")
            spent, n_calls, full = spent + cost(n_long, t), n_calls + n_long, full + 1
        per_trial.append(spent)
        best = value if best is None else min(best, value)
        told[key] = value
        observed[point] = value
        study.tell(trial, value)
    top = sorted(observed, key=observed.get)[:TOP_K]
    remeasured = {p: watch.median(p, data.records[p].time_ms / 1e3, calls(TARGET_S, data.records[p].time_ms / 1e3,
                                  REMEASURE_REPEATS), "remeasure") for p in top}  # fmt: skip
    winner = min(remeasured, key=remeasured.get)
    return {
        "seed": seed,
        "evaluations": len(told),
        "winner": dict(zip(data.keys, winner, strict=True)),
        "winner_ms": data.records[winner].time_ms,
        "timing_s": sum(per_trial),
        "median_trial_timing_s": statistics.median(per_trial),
        "timed_calls": n_calls,
        "full_timings": full,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO / "bench/results/replay_h100")
    ap.add_argument("--launch-bound", type=Path, default=REPO / "bench/experiments/results/launch_bound_h100.json")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/screening_h100.json")
    args = ap.parse_args()
    start = time.time()
    run = run_spread(args.launch_bound)
    files = []
    for path in sorted(args.data.glob("*.json.gz")):
        data = load_recording(path)
        raw = json.load(gzip.open(path, "rt"))
        spreads = {tuple(v[k] for k in data.keys): float(v.get("spread", 0.0)) for v in raw["cache"].values()}
        row: dict = {"file": path.name, "optimum_ms": data.optimum, "arms": {}}
        for arm in ARMS:
            runs = [
                search(data, Stopwatch(spreads, run, seed + arm.noise), arm, seed, args.budget)
                for seed in range(args.seeds)
            ]
            row["arms"][arm.name] = {
                "runs": runs,
                "median_timing_s": statistics.median(r["timing_s"] for r in runs),
                "median_trial_timing_s": statistics.median(r["median_trial_timing_s"] for r in runs),
            }
        full = row["arms"][ARMS[0].name]["runs"]
        full_s = row["arms"][ARMS[0].name]["median_timing_s"]
        for arm in ARMS[1:]:
            runs = row["arms"][arm.name]["runs"]
            ratios = [r["winner_ms"] / f["winner_ms"] for r, f in zip(runs, full, strict=True)]
            row["arms"][arm.name] |= {
                "same_winner": sum(r["winner"] == f["winner"] for r, f in zip(runs, full, strict=True)),
                "worst_winner_vs_full": max(ratios),
                "timing_vs_full": row["arms"][arm.name]["median_timing_s"] / full_s,
            }  # fmt: skip
        files.append(row)
        print(json.dumps({"file": path.name, **{a: {k: v for k, v in d.items() if k != "runs"}
                                                  for a, d in row["arms"].items()}}), flush=True)  # fmt: skip
    doc = {
        "command": "python bench/screening.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": "2-core development machine (offline: recordings of an NVIDIA H100 80GB HBM3)",
        "wall_s": round(time.time() - start, 1),
        "model": {
            "run_spread": run,
            "fixed_s": FIXED_S,
            "flush_s": FLUSH_S,
            "host_s": HOST_S,
            "target_s": TARGET_S,
            "max_repeats": MAX_REPEATS,
            "repeats": REPEATS,
            "top_k": TOP_K,
        },  # fmt: skip
        "files": files,
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out} after {doc['wall_s']} s")


if __name__ == "__main__":
    main()
