"""The README's test command, run again and again with a CPU-burning process beside each run: the check that
the suite does not depend on timing luck on a busy 2-core machine.

    python bench/test_under_load.py [--runs 10] [--out bench/results/test_under_load.json]

Each run starts ``python -c "while True: pass"``, runs ``python -m pytest -q -p no:cacheprovider`` from the
repository root (no cache, so no run reorders tests from the last one's failures), and stops the burner. The
result file is rewritten after every run, so an interrupted loop keeps what it measured; a run's last output
lines are kept when it fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from cotune.tuner.device.profiles import cpu_profile

REPO = Path(__file__).resolve().parents[1]
TEST_COMMAND = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
BURNER = [sys.executable, "-c", "while True: pass"]


def machine() -> dict[str, object]:
    cpu = cpu_profile().name  # the name cotune records for this CPU
    mem_kib = int(
        next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
    }


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    return out.stdout.strip() + ("+uncommitted" if dirty else "")


def one_run(index: int) -> dict[str, object]:
    burner = subprocess.Popen(BURNER)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(TEST_COMMAND, cwd=REPO, capture_output=True, text=True)
    finally:
        burner.kill()
        burner.wait()
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    run: dict[str, object] = {
        "run": index,
        "started": started,
        "wall_s": round(time.monotonic() - t0, 1),
        "returncode": proc.returncode,
        "summary": lines[-1] if lines else "",
        "load_average_after": os.getloadavg(),
    }
    if proc.returncode != 0:
        run["tail"] = lines[-60:]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/test_under_load.json")
    args = parser.parse_args()
    result: dict[str, object] = {
        "benchmark": "the README's test command with one CPU-burning process beside each run",
        "command": f"python bench/test_under_load.py --runs {args.runs}",
        "test_command": "python -m pytest -q -p no:cacheprovider",
        "burner": 'python -c "while True: pass"',
        "date": datetime.now(UTC).date().isoformat(),
        "commit": commit(),
        "machine": machine(),
        "runs": [],
    }
    runs: list[dict[str, object]] = result["runs"]  # type: ignore[assignment]
    for i in range(1, args.runs + 1):
        runs.append(one_run(i))
        passed = [r for r in runs if r["returncode"] == 0]
        result["passed_in_a_row"] = next((k for k, r in enumerate(runs) if r["returncode"] != 0), len(runs))
        result["passed"] = f"{len(passed)} of {len(runs)}"
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"run {i}: rc {runs[-1]['returncode']}, {runs[-1]['wall_s']} s, {runs[-1]['summary']}", flush=True)


if __name__ == "__main__":
    main()
