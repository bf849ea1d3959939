"""Score search runs on cotune's own recordings by program time instead of single-config time.

    python bench/experiments/program_scores.py RESULT.json [RESULT.json ...] [--data bench/results/replay_h100] \
        [--out FILE]

Configs that run one program (``Kernel.program_key``) differ only by timing noise, so the file's raw optimum
is partly the luck of one twin's reading. This re-scores the benchmark's runs (``bench/search_efficiency.py``
result files, Kernel Tuner's included) with each config's time replaced by its program's median over the
recorded twins, and the optimum by the best program's median. A run's best config after N evaluations is
the one its result file records (``best``); result files written before they recorded it give only the
best/optimum, and then the config is found by its time: where programs share that time, it scores as the
slowest of them (the row's ``ambiguous`` counts such runs).
Prints, per file and strategy, the median best/optimum by program after 50 and 200 and the runs of 20
holding the best program then, and the quarter-budget check against the best Kernel Tuner strategy.
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
import sys
from pathlib import Path

from cotune.tuner.search.replay import ReplayData, load_recording

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the bench/ folder: its maintained benchmarks
from search_efficiency import write_result

CHECKPOINTS = ("50", "200")


class ProgramTimes:
    """A recording's configs, each scored by its program's median time over the program's configs."""

    def __init__(self, data: ReplayData) -> None:
        program = data.program_key() if data.knows_programs else (lambda point: point)
        groups: dict[object, list[float]] = {}
        of_time: dict[float, set] = {}
        for point, record in data.records.items():
            if record.time_ms is None:
                continue
            groups.setdefault(program(point), []).append(record.time_ms)
            of_time.setdefault(record.time_ms, set()).add(program(point))
        median = {key: statistics.median(times) for key, times in groups.items()}
        self._program = program
        self._of_program = median
        self.raw_optimum = data.optimum
        self.best = min(median.values())
        self.programs = len(groups)
        self._times = sorted(of_time)
        # Where programs share a recorded time (the stopwatch's resolution), which one a run held is
        # unknown: it is scored as the slowest of them, against every strategy alike.
        self._median = {t: max(median[key] for key in keys) for t, keys in of_time.items()}
        self._shared = {t for t, keys in of_time.items() if len({median[k] for k in keys}) > 1}

    def of_run(self, run: dict, n: str) -> tuple[float, bool]:
        """A run's best/optimum by program time after ``n`` evaluations, and whether it had to be guessed
        from a time that programs share."""
        if "best" in run:
            return self._of_program[self._program(tuple(run["best"][n]))] / self.best, False
        return self.ratio(run["ratio"][n]), self.ambiguous(run["ratio"][n])

    def ratio(self, raw_ratio: float) -> float:
        """A run's best/optimum by raw time -> by program time."""
        return self._median[self._recorded(raw_ratio)] / self.best

    def ambiguous(self, raw_ratio: float) -> bool:
        """Whether programs with different medians share a time within float rounding of the run's best."""
        t = raw_ratio * self.raw_optimum
        return any(abs(shared - t) <= 1e-9 * t for shared in self._shared)

    def _recorded(self, raw_ratio: float) -> float:
        """The recorded time a run's best/optimum stands for (the ratio carries float rounding)."""
        t = raw_ratio * self.raw_optimum
        i = bisect.bisect_left(self._times, t)
        near = min((self._times[j] for j in (i - 1, i) if 0 <= j < len(self._times)), key=lambda x: abs(x - t))
        if abs(near - t) > 1e-9 * t:
            raise ValueError(f"no recorded time matches {t} ms")
        return near


def score(results: list[Path], data_dir: Path) -> list[dict]:
    runs = [r for path in results for r in json.loads(path.read_text())["runs"]]
    rows = []
    for name in sorted({r["file"] for r in runs}):
        times = ProgramTimes(load_recording(data_dir / name))
        for strategy in sorted({r["strategy"] for r in runs if r["file"] == name}):
            group = [r for r in runs if r["file"] == name and r["strategy"] == strategy]
            row = {"file": name, "strategy": strategy, "seeds": len(group), "programs": times.programs}
            for n in CHECKPOINTS:
                by_program, guessed = zip(*(times.of_run(r, n) for r in group), strict=True)
                row[f"median@{n}"] = round(statistics.median(by_program), 4)
                row[f"at_best@{n}"] = sum(v <= 1.0 for v in by_program)
                row[f"ambiguous@{n}"] = sum(guessed)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, default=Path("bench/results/replay_h100"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = score(args.results, args.data)
    for name in sorted({r["file"] for r in rows}):
        group = [r for r in rows if r["file"] == name]
        print(f"{name} ({group[0]['programs']} programs)")
        for r in sorted(group, key=lambda r: (r["median@50"], -r["at_best@50"])):
            ambiguous = (r["ambiguous@50"], r["ambiguous@200"])
            print(
                f"  {r['strategy']:28} @50 {r['median@50']:.4f} ({r['at_best@50']:2d} at the best)"
                f"   @200 {r['median@200']:.4f} ({r['at_best@200']:2d})"
                + (f"   ambiguous {ambiguous[0]}, {ambiguous[1]}" if any(ambiguous) else "")
            )
        peers = [r for r in group if r["strategy"].startswith("kt:")]
        ours = [r for r in group if not r["strategy"].startswith("kt:")]
        if peers and ours:
            target = min(r["median@200"] for r in peers)
            met = [r["strategy"] for r in ours if r["median@50"] <= target]
            print(f"  quarter budget (@50 <= Kernel Tuner's best @200, {target:.4f}): {', '.join(met) or 'none'}")
    if args.out:
        write_result(args.out, "bench/experiments/program_scores.py", rows=rows)


if __name__ == "__main__":
    main()
