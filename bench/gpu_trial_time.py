"""Where the wall time of a GPU tuning trial goes: one ``tune_job`` on one shape under cProfile, with the wall
time of each step of the search beside the time the candidate process spent measuring it (``duration_s``:
compiling if the pool missed, the correctness check and the timed repeats). The first step's wall counts
from the call: the first-trial latency. Needs an NVIDIA GPU (bench/gpu_evidence.py's trial_time step calls
:func:`trial_time`, also on the CPU for its dry run).

    python bench/gpu_trial_time.py [--trials 20] [--shape 4096x8192x8192] [--precision bf16] [--out F.json]

The profile covers the driving process only (sampler, storage, waits on the pool and on the candidate
process); its top entries by cumulative time go to the JSON beside the per-step times.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cotune.tuner.device.profiles import detect  # noqa: E402
from cotune.tuner.driver import Progress, tune_job  # noqa: E402
from cotune.tuner.spec.job import parse_spec  # noqa: E402
from cotune.tuner.track.tracker import NullTracker  # noqa: E402
from cotune.tuner.types import DeviceProfile  # noqa: E402


def trial_time(
    kernel: str, shape: dict[str, int], precision: str, trials: int, workers: int, device: DeviceProfile, profile: bool
) -> dict:
    """Tune one problem and time each step (wall, and the candidate process's measuring within it). The first
    step's wall counts from the call, so it is the first-trial latency: storage, study, sampler, the
    candidate process and the compile pool starting, then the first candidate compiled and measured."""
    steps: list[dict] = []
    start = last = time.perf_counter()

    def on_progress(p: Progress) -> None:
        nonlocal last
        now = time.perf_counter()
        steps.append({"status": p.last.status.value, "wall_s": now - last, "measure_s": p.last.duration_s})
        last = now

    dims = ", ".join(f"{k}: {v}" for k, v in shape.items())
    spec = parse_spec(
        f"name: trial-time\nkernel: {kernel}\nproblems: [{{{dims}}}]\n"
        f"precisions: [{precision}]\nbudget: {{trials: {trials}}}\nsampler: {{name: cotune, seed: 0}}\n"
        "bench: {warmup: 3, repeats: 20, remeasure_repeats: 50, target_ms: 100, timeout_s: 120, "
        f"compile_workers: {workers}}}\n"
    )
    prof = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        if profile:
            prof.enable()
        tune_job(spec, f"sqlite:///{tmp}/t.db", device, NullTracker(), on_progress=on_progress)
        if profile:
            prof.disable()
    total = time.perf_counter() - start
    measured = [s for s in steps if s["measure_s"] > 0]
    out = {
        "device": device.name,
        "kernel": kernel,
        "shape": shape,
        "precision": precision,
        "compile_workers": workers,
        "total_s": total,
        "steps": len(steps),
        "first_step_wall_s": steps[0]["wall_s"] if steps else None,
        "median_step_wall_s": statistics.median(s["wall_s"] for s in steps[1:]) if len(steps) > 1 else None,
        "median_measure_s": statistics.median(s["measure_s"] for s in measured) if measured else None,
        "per_step": steps,
    }
    if profile:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(40)
        out["profile_top"] = text.getvalue().splitlines()[:80]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--shape", default="4096x8192x8192", help="MxNxK of triton_matmul")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--compile-workers", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    m, n, k = map(int, args.shape.split("x"))
    device = detect("cuda")
    result = {
        "date": dt.date.today().isoformat(),
        "command": "python " + " ".join(sys.argv),
        **trial_time("triton_matmul", {"M": m, "N": n, "K": k}, args.precision, args.trials,
                     args.compile_workers, device, profile=True),
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_step", "profile_top")}))
    print("\n".join(result["profile_top"]))


if __name__ == "__main__":
    main()
