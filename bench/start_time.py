"""How long a GPU job takes to start its first trial, CPU side: ``tune_job`` on a Triton matmul problem with the
recorded H100 profile, timed from the call to the moment the first candidate request goes to a ready candidate
process ("first trial starts") and to its answer. Without a GPU the candidate fails at once (torch sees no
CUDA device) after importing torch, so this measures what a GPU machine's CPU does before the GPU is used:
storage, study and sampler set-up, the candidate process and the compile pool starting and importing.

    python bench/start_time.py [--workers 0 8] [--rounds 3] [--out bench/results/start_time_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cotune.tuner.device.profiles import recorded_profile  # noqa: E402
from cotune.tuner.driver import tune_job  # noqa: E402
from cotune.tuner.measure import isolation  # noqa: E402
from cotune.tuner.spec.job import parse_spec  # noqa: E402
from cotune.tuner.track.tracker import NullTracker  # noqa: E402


def first_trial(workers: int) -> dict[str, float]:
    marks: dict[str, float] = {}
    start_child, run = isolation.CandidateRunner._start, isolation.CandidateRunner.run

    def timed_start(self: isolation.CandidateRunner) -> object:
        conn = start_child(self)
        marks.setdefault("first_trial_starts_s", time.perf_counter() - t0)
        return conn

    def timed_run(self: isolation.CandidateRunner, request: isolation.Request) -> object:
        out = run(self, request)
        marks.setdefault("first_result_s", time.perf_counter() - t0)
        return out

    isolation.CandidateRunner._start, isolation.CandidateRunner.run = timed_start, timed_run  # type: ignore[method-assign]
    spec = parse_spec(
        "name: start\nkernel: triton_matmul\nproblems: [{M: 16, N: 8192, K: 8192}]\nprecisions: [bf16]\n"
        f"budget: {{trials: 3}}\nsampler: {{name: cotune, seed: 0}}\nbench: {{compile_workers: {workers}}}\n"
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            tune_job(spec, f"sqlite:///{tmp}/t.db", recorded_profile("NVIDIA H100 80GB HBM3"), NullTracker())
            marks["job_s"] = time.perf_counter() - t0
    finally:
        isolation.CandidateRunner._start, isolation.CandidateRunner.run = start_child, run  # type: ignore[method-assign]
    return marks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 8])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/start_time_cpu.json")
    args = ap.parse_args()
    rows = []
    for rnd in range(args.rounds):
        for workers in args.workers:
            rows.append({"round": rnd, "compile_workers": workers, **first_trial(workers), "load": os.getloadavg()[0]})
            print(json.dumps(rows[-1]), flush=True)
    summary = {
        str(w): {
            k: statistics.median(r[k] for r in rows if r["compile_workers"] == w)
            for k in ("first_trial_starts_s", "first_result_s")
        }
        for w in args.workers
    }
    doc = {
        "command": "python bench/start_time.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"development machine, {os.cpu_count()} cores shared with other sessions (load in each row)",
        "median": summary,
        "rows": rows,
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
