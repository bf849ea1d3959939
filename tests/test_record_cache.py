"""bench/record_cache.py: a brute-force recording of a real compiled kernel (the C matmul, on this CPU) is a
cache that replay reads, holds every feasible config of the sub-grid, and resumes without re-measuring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cotune.tuner.device.profiles import detect
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.search.replay import load_kernel_tuner_cache, replay
from cotune.tuner.types import Problem

REPO = Path(__file__).resolve().parents[1]
GRID = ["--values", "TILE_M=8,16", "--values", "TILE_N=16,32", "--values", "TILE_K=8,16", "--values", "UNROLL=1,4"]
SHAPES = ["--problem", "M=32,N=32,K=32", "--problem", "M=32,N=64,K=32"]


def record(out: Path, *extra: str) -> str:
    cmd = [sys.executable, str(REPO / "bench/record_cache.py"), "--kernel", "c_matmul", "--precision", "fp32"]
    proc = subprocess.run(
        [*cmd, *SHAPES, *GRID, "--compile-workers", "2", "--out-dir", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_recording_replays_and_resumes(tmp_path: Path) -> None:
    first = record(tmp_path)
    kernel = get_kernel("c_matmul")
    problem = Problem.make("c_matmul", {"M": 32, "N": 32, "K": 32}, "fp32")
    feasible = [
        c
        for c in kernel.space().feasible_points(problem, detect("cpu"))
        if c["TILE_M"] in (8, 16) and c["TILE_N"] in (16, 32) and c["TILE_K"] in (8, 16) and c["UNROLL"] in (1, 4)
    ]
    [cache] = [p for p in tmp_path.glob("c_matmul_fp32_K32_M32_N32_*.json.gz")]
    data = load_kernel_tuner_cache(cache)
    assert len(data.records) == len(feasible) == 2 * 2 * 2 * 2 * 3  # three loop orders
    log = cache.with_name(cache.name.removesuffix(".json.gz") + ".jsonl")
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert data.optimum == min(r["time"] for r in rows)
    assert replay(data, sampler="cotune", budget=len(feasible), seed=0).best_so_far[-1] == data.optimum
    assert len(list(tmp_path.glob("*.json.gz"))) == 2, first

    # a cut-off run is resumed: only the configs missing from the log are measured again
    log.write_text("\n".join(log.read_text().splitlines()[:-5]) + "\n")
    again = record(tmp_path)
    assert "5 configs to compile" in again, again
    assert len(log.read_text().splitlines()) == len(feasible)


@pytest.mark.parametrize(
    ("values", "message"),
    [("BLOCK=8", "c_matmul has no param 'BLOCK'"), ("TILE_M=8,12", "12 not a value of TILE_M")],
)
def test_unknown_param_or_value_is_a_clear_error(tmp_path: Path, values: str, message: str) -> None:
    """A typo in --values must not silently record another sub-grid than the one asked for."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench/record_cache.py"), "--kernel", "c_matmul", "--precision", "fp32",
         "--problem", "M=32,N=32,K=32", "--values", values, "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not list(tmp_path.glob("*.json*"))
