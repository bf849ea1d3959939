"""How many of a search's evaluations re-measure a program it already measured under another config
(``Kernel.program_key``), on cotune's own recordings: the GPU time that measuring each program once saves.

    python bench/experiments/twin_waste.py [--data bench/results/replay_h100] [--seeds 4] [--budget 200]

Replays the search as it ran before programs were known (every config its own evaluation) and counts, per
run, the evaluations after 50 and after ``--budget`` whose program an earlier evaluation had measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from cotune.tuner.search.replay import load_recording, replay


def waste(path: Path, seeds: int, budget: int, sampler: str) -> dict:
    data = load_recording(path)
    program = data.program_key()
    runs = []
    for seed in range(seeds):
        seen: set = set()
        repeats = []
        for point in replay(data, sampler=sampler, budget=budget, seed=seed).evaluated:
            repeats.append(program(point) in seen)
            seen.add(program(point))
        runs.append({"seed": seed, "at_50": sum(repeats[:50]), f"at_{budget}": sum(repeats)})
    return {
        "file": path.name,
        "configs": len(data.records),
        "programs": len({program(p) for p in data.records}),
        "runs": runs,
        "median_at_50": statistics.median(r["at_50"] for r in runs),
        f"median_at_{budget}": statistics.median(r[f"at_{budget}"] for r in runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("bench/results/replay_h100"))
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--sampler", default="cotune")
    ap.add_argument("--out", type=Path, default=Path("bench/experiments/results/twin_waste_h100.json"))
    args = ap.parse_args()
    start = time.time()
    rows = []
    for path in sorted(args.data.glob("triton_matmul_*.json.gz")):
        rows.append(waste(path, args.seeds, args.budget, args.sampler))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "runs"}), flush=True)
    doc = {"command": "python bench/experiments/twin_waste.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
           "date": time.strftime("%Y-%m-%d"), "wall_s": round(time.time() - start, 1), "files": rows}  # fmt: skip
    args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
