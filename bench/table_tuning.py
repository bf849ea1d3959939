"""What a table of batch sizes costs to tune, replayed on recorded brute-force data: cotune's table mode
(``budget.table_patience``) against tuning every batch size alone with its whole budget, and against the
exhaustive sweep vLLM's and SGLang's tuning scripts run at every batch size.

    python bench/table_tuning.py --table 'bench/results/replay_h100/**/triton_moe_bf16_E8_K4096_M*' \
        [--table GLOB ...] [--budget 50] [--table-patience 8] [--seeds 20] [--out bench/results/table_tuning.json]

A table is a set of recordings of one kernel and problem that differ only in the batch dim M (the files name
their cotune kernel and problem). Each seed replays the table the way ``cotune tune`` tunes it: batch sizes
in bisection order (:func:`cotune.tuner.search.transfer.table_order`), each one measuring first the winners
of its tuned neighbours and modelling from the configs the two nearest ones measured; one whose neighbours
on both sides found the same program stops after ``--table-patience`` evaluations without a 1 % gain. The
real study also measures the space file's seeds first; replay has none. A partial recording (record_cache's
``.jsonl`` of a run that was cut off) replays as the configs it holds.

Reports per table: evaluations used against the configs recorded (an exhaustive sweep) and the grid's size
times the batch sizes, and per batch size the best found over the recorded optimum (median and worst over
seeds), for both modes.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import glob
import json
import math
import statistics
import sys
from pathlib import Path

from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.search.replay import Record, ReplayData, load_recording, replay
from cotune.tuner.search.transfer import MAX_RELATED, TABLE_AGREEMENT, table_order
from cotune.tuner.types import Problem

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_efficiency import write_result  # noqa: E402 - bench/ helpers


def load_partial(path: Path, like: ReplayData) -> ReplayData:
    """A record_cache ``.jsonl`` (one measured config per line) as a recording of the configs it holds, named
    after the complete recording ``like`` of the same kernel whose problem it shares but for M."""
    records: dict[tuple, Record] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        point = tuple(row["config"][k] for k in like.keys)
        time_ms = row.get("time")
        records[point] = Record(time_ms if isinstance(time_ms, int | float) else None, None, 0.0)
    m = int(path.name.split("_M")[1].split("_")[0])
    values = {k: tuple(sorted({p[i] for p in records})) for i, k in enumerate(like.keys)}
    return ReplayData(path.name, like.keys, values, records, like.precision, like.kernel, {**like.problem, "M": m})


def load_table(pattern: str) -> list[ReplayData]:
    paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
    complete = [load_recording(p) for p in paths if not p.name.endswith(".jsonl")]
    if not complete:
        raise SystemExit(f"{pattern}: no complete recording to name the table's kernel and problem")
    table = complete + [load_partial(p, complete[0]) for p in paths if p.name.endswith(".jsonl")]
    rest = {json.dumps({k: v for k, v in d.problem.items() if k != "M"}, sort_keys=True) for d in table}
    if len(rest) != 1 or len({d.kernel for d in table}) != 1:
        raise SystemExit(f"{pattern}: the recordings differ in more than M: {sorted(rest)}")
    return table


MODES = ("alone", "transfer", "table")


def tune_table(table: list[ReplayData], budget: int, table_patience: int, seed: int, mode: str) -> list[dict]:
    """One replay of the whole table.

    ``alone``: every batch size by itself, in M order, its whole budget (no transfer). ``transfer``: in M order,
    each measuring first the winner of the nearest tuned batch size and modelling from the two nearest, its
    whole budget (``cotune tune`` without table_patience). ``table``: bisection order, the winners of both tuned
    neighbours first, and a batch size whose neighbours' winners time within 2 % of each other here stops
    after ``table_patience`` evaluations without a 1 % gain (``budget.table_patience``).
    """
    by_m = {d.problem["M"]: d for d in table}
    problems = sorted(
        (Problem.make(d.kernel, d.problem, d.precision or "fp32") for d in table), key=lambda p: p.dims["M"]
    )
    order = table_order(problems, get_kernel(table[0].kernel).batch_dim) if mode == "table" else problems
    tuned: dict[int, tuple[list[tuple], tuple]] = {}  # M -> (evaluated points, best point)
    rows = []
    for problem in order:
        m = problem.dims["M"]
        data = by_m[m]
        priors, related, patience, quiet = [], [], None, False
        nearest = sorted(tuned, key=lambda t: (abs(math.log2(t) - math.log2(m)), t))
        if mode == "transfer" and nearest:
            priors = [dict(zip(data.keys, tuned[nearest[0]][1], strict=True))]
        elif mode == "table":
            below = max((t for t in tuned if t < m), default=None)
            above = min((t for t in tuned if t > m), default=None)
            winners = [tuned[t][1] for t in (below, above) if t is not None]
            priors = [dict(zip(data.keys, w, strict=True)) for w in winners]
            times = [data.records[w].time_ms for w in winners if w in data.records]
            quiet = len(times) == 2 and None not in times and max(times) <= min(times) * (1 + TABLE_AGREEMENT)
            patience = table_patience if quiet else None
        if mode != "alone":
            related = [by_m[t].subset(tuned[t][0]) for t in nearest[:MAX_RELATED]]
        result = replay(
            data,
            sampler="cotune",
            budget=budget,
            seed=seed,
            priors=priors,
            patience=patience,
            related=related,
            same_program=True,
        )
        ok = [(data.records[p].time_ms, p) for p in result.evaluated if data.records[p].time_ms is not None]
        best = min(ok)[1] if ok else None
        tuned[m] = (result.evaluated, best) if best is not None else tuned.get(m, ([], ()))
        rows.append(
            {
                "M": m,
                "evaluations": len(result.best_so_far),
                "recorded": len(data.records),
                "best_over_optimum": (min(ok)[0] / data.optimum) if ok else None,
                "quiet": quiet,
            }
        )
    return sorted(rows, key=lambda r: r["M"])


def summarise(runs: list[list[dict]], grid: int) -> dict:
    per_m = {}
    for row in runs[0]:
        m = row["M"]
        ratios = [r["best_over_optimum"] for run in runs for r in run if r["M"] == m]
        found = [x for x in ratios if x is not None]
        per_m[str(m)] = {
            "evaluations_median": statistics.median(r["evaluations"] for run in runs for r in run if r["M"] == m),
            "recorded": row["recorded"],
            "best_over_optimum_median": statistics.median(found) if found else None,
            "best_over_optimum_worst": max(found) if found else None,
            "quiet_runs": sum(r["quiet"] for run in runs for r in run if r["M"] == m),
        }
    used = [sum(r["evaluations"] for r in run) for run in runs]
    recorded = sum(row["recorded"] for row in runs[0])
    return {
        "evaluations_median": statistics.median(used),
        "evaluations_max": max(used),
        "exhaustive_recorded": recorded,
        "exhaustive_grid": grid * len(runs[0]),
        "worst_best_over_optimum": max(v["best_over_optimum_worst"] or 0 for v in per_m.values()),
        "per_M": per_m,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="append", required=True, help="glob of one table's recordings")
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--table-patience", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results/table_tuning.json"))
    args = parser.parse_args()
    tables = []
    for pattern in args.table:
        table = load_table(pattern)
        grid = get_kernel(table[0].kernel).space().size
        modes = {}
        for label in MODES:
            runs = []
            for seed in range(args.seeds):
                runs.append(tune_table(table, args.budget, args.table_patience, seed, label))
                print(f"{pattern} {label} seed {seed}: {sum(r['evaluations'] for r in runs[-1])} evaluations",
                      file=sys.stderr, flush=True)  # fmt: skip
            modes[label] = summarise(runs, grid)
        tables.append({"table": pattern, "kernel": table[0].kernel, "Ms": sorted(d.problem["M"] for d in table),
                       "modes": modes})  # fmt: skip
    write_result(args.out, "table_tuning", budget=args.budget, table_patience=args.table_patience,
                 seeds=args.seeds, tables=tables)  # fmt: skip
    for t in tables:
        for label, s in t["modes"].items():
            worst = s["worst_best_over_optimum"]
            print(f"{t['table']} [{label}]: {s['evaluations_median']} evaluations (median; max "
                  f"{s['evaluations_max']}) against {s['exhaustive_recorded']} recorded configs and "
                  f"{s['exhaustive_grid']} grid points; worst best/optimum {worst:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
