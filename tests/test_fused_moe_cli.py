"""The fused-MoE layer without a GPU, as a user runs it: `cotune tune` of a tiny spec on this CPU (Triton's
interpreter in the candidate process, which the tuner starts without TRITON_INTERPRET), and
bench/record_cache.py recording a fused problem with its baselines for offline replay."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from cotune.tuner.search.replay import load_kernel_tuner_cache

from tests.cli import tune_and_export

REPO = Path(__file__).resolve().parents[1]
SPEC = """
name: tiny-moe
kernel: fused_moe
problems:
  - {M: 3, E: 4, H: 64, I: 32, topk: 2}
precisions: [fp8]
budget: {trials: 3}
sampler: {seed: 0}
top_k: 1
bench: {warmup: 0, repeats: 2, remeasure_repeats: 2}
"""


def test_tune_a_tiny_fused_moe_spec_on_the_cpu(tmp_path: Path) -> None:
    proc = tune_and_export(tmp_path, SPEC)
    assert "say nothing about any GPU" in proc.stderr
    [entry] = json.loads((tmp_path / "best.json").read_text())["entries"]
    assert entry["kernel"] == "fused_moe" and entry["dtype"] == "fp8" and entry["device"]["kind"] == "cpu"
    assert entry["shape"] == {"M": 3, "E": 4, "H": 64, "I": 32, "topk": 2}
    assert set(entry["config"]) == {"BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps",
                                    "num_stages"}  # fmt: skip
    assert entry["metrics"]["time_s"] > 0 and entry["metrics"]["max_rel_error"] <= 3e-2


def test_record_cache_records_a_fused_problem_with_its_baselines(tmp_path: Path) -> None:
    grid = ["BLOCK_SIZE_M=16", "BLOCK_SIZE_N=32", "BLOCK_SIZE_K=64", "GROUP_SIZE_M=1,16", "num_warps=4", "num_stages=2"]
    cmd = [sys.executable, str(REPO / "bench/record_cache.py"), "--kernel", "fused_moe", "--precision", "bf16",
           "--problem", "M=3,E=4,H=64,I=32,topk=2", "--bench", "warmup=0,repeats=1", "--compile-workers", "1",
           "--out-dir", str(tmp_path)]  # fmt: skip
    for value in grid:
        cmd += ["--values", value]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    [path] = tmp_path.glob("fused_moe_bf16_E4_H64_I32_M3_topk2_*.json.gz")
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    assert len(data["cache"]) == 2  # the sub-grid, and nothing else: the baseline is not a grid point
    default = data["baselines"]["vllm_default"]  # M <= E: vLLM's small default, Triton's 4 warps, 3 stages
    assert default["config"] == {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1,
                                 "num_warps": 4, "num_stages": 3} and default["time"] > 0  # fmt: skip
    assert len(load_kernel_tuner_cache(path).records) == 2

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # resumes: nothing left to measure
    assert again.returncode == 0, again.stderr
    assert "0 configs to compile" in again.stdout and "baselines 1/1" in again.stdout
    assert "baseline vllm_default" not in again.stdout
