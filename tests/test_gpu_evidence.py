"""bench/gpu_evidence.py, checked where CI runs: its dry run goes through every step on the CPU (the GPU tests
collected with the GPU machine's missing packages blocked, the TMA variants compiled for sm_90, tuning,
fresh-process re-measures, a real worker on a real PostgreSQL and Redis), and a second run resumes; on a
GPU, the screening stopwatch times a slow candidate short and a leader in full."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evidence")
    cmd = [sys.executable, "bench/gpu_evidence.py", "--dry-run", "--out-dir", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_the_dry_run_goes_through_every_step_in_order(dry_run: Path) -> None:
    from gpu_evidence import STEPS

    rows = _rows(dry_run / "evidence.jsonl")
    assert [s for s in dict.fromkeys(r["step"] for r in rows)] == list(STEPS)
    errors = [r for r in rows if r["status"] == "error"]
    assert not errors, errors
    assert all(r["dry_run"] and r["commit"] and r["date"] and r["device"] for r in rows)


def test_the_gpu_tests_collect_without_the_packages_the_gpu_machine_lacks(dry_run: Path) -> None:
    [row] = [r for r in _rows(dry_run / "evidence.jsonl") if r["step"] == "pytest"]
    assert row["returncode"] == 0 and "tests collected" in row["summary"], row["output"]
    assert "test_triton_matmul.py" in row["command"] and "--collect-only" in row["command"]


def test_each_variant_the_matmul_step_measures_first_compiles_for_sm90(dry_run: Path) -> None:
    [row] = [r for r in _rows(dry_run / "evidence.jsonl") if r["key"] == "compile_sm90"]
    kinds = {c["config"]["KERNEL"] for c in row["configs"]}
    assert kinds == {"tutorial", "persistent_tma", "persistent_tma_ws"}  # M=4096 fp8 admits all three
    for c in row["configs"]:
        assert (c["tma"] > 0) == (c["config"]["KERNEL"] != "tutorial"), c
        assert c["shared"] <= 232448, c  # within the H100's opt-in shared memory per block


def test_tuned_rows_carry_winner_baseline_and_fresh_process_remeasure(dry_run: Path) -> None:
    rows = _rows(dry_run / "evidence.jsonl")
    tuned = [r for r in rows if r["step"] == "matmul" and "winner" in r]
    assert len(tuned) == 2
    for r in tuned:
        assert r["time_s"] > 0 and r["baseline"]["time_s"] > 0 and r["vs_baseline"] > 0
        assert r["best_time_s_by_variant"]
    remeasured = {r["key"]: r for r in rows if r["step"] == "remeasure"}
    winners = [r for r in rows if r["step"] in ("matmul", "moe") and "winner" in r]
    assert set(remeasured) == {r["key"] for r in winners}  # every winner, the fused-MoE ones included
    assert all(len(r["fresh_times_s"]) == 2 for r in remeasured.values())


def test_moe_rows_hold_tuned_shipped_and_default_and_the_vllm_files(dry_run: Path) -> None:
    """The fused-MoE step (on the CPU stand-in shapes): each row has the winner and the server's configs
    measured beside it (vLLM's default rule; no shipped file exists for a CPU), and the step writes the vLLM
    files of the tuned models and the tuned / shipped / default table."""
    rows = [r for r in _rows(dry_run / "evidence.jsonl") if r["step"] == "moe"]
    tuned = [r for r in rows if "winner" in r]
    assert {r["precision"] for r in tuned} == {"bf16", "fp8_block128"}
    for r in tuned:
        assert r["time_s"] > 0 and r["server_baselines"]["vllm_default"]["time_s"] > 0
    table = (dry_run / "moe_table.md").read_text()
    assert "| tuned | vLLM shipped | vLLM default |" in table and table.count("\n") == 2 + len(tuned)
    files = sorted(p.name for p in (dry_run / "moe_vllm").iterdir() if p.suffix == ".json" and ".cotune" not in p.name)
    assert len(files) == 2 and any("block_shape=[128,128]" in f for f in files)


def test_a_real_worker_ran_the_job_on_its_queue(dry_run: Path) -> None:
    [row] = [r for r in _rows(dry_run / "evidence.jsonl") if r["step"] == "worker"]
    assert row["state"] == "succeeded" and row["trials"]["finished"] == 4 and row["trials"]["failed"] == 0
    assert row["best"][0]["time_s"] > 0 and row["worker_exit"] is None  # the worker was alive to the end


def test_a_second_run_resumes_and_only_reruns_what_only_names(dry_run: Path) -> None:
    before = _rows(dry_run / "evidence.jsonl")
    cmd = [sys.executable, "bench/gpu_evidence.py", "--dry-run", "--out-dir", str(dry_run)]
    again = subprocess.run([*cmd, "--only", "stopwatch"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    added = _rows(dry_run / "evidence.jsonl")[len(before) :]
    assert [r["step"] for r in added] == ["stopwatch"]
    resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    added = _rows(dry_run / "evidence.jsonl")[len(before) + 1 :]
    assert [r["step"] for r in added] == ["env"]  # every unit done before was skipped: nothing measured again


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_stopwatch_screens_a_slow_candidate_and_times_a_leader_in_full() -> None:
    from cotune.kernels.triton_matmul import TritonMatmul
    from cotune.tuner.device.profiles import detect
    from cotune.tuner.measure.kernel import BenchSettings
    from cotune.tuner.types import Config, Problem

    device, kernel = detect("cuda"), TritonMatmul()
    problem = Problem.make("triton_matmul", {"M": 16, "N": 8192, "K": 8192}, "bf16")
    config = Config.make({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 256, "GROUP_M": 1, "SPLIT_K": 1,
                          "num_warps": 4, "num_stages": 4})  # fmt: skip
    full = kernel.measure(problem, config, device, BenchSettings())
    slow = kernel.measure(problem, config, device, BenchSettings(screen_cutoff_s=full.median_s / 2))
    leader = kernel.measure(problem, config, device, BenchSettings(screen_cutoff_s=full.median_s * 2))
    assert len(slow.times_s) < len(full.times_s) / 4  # about 5 ms of calls against 100 ms
    assert len(leader.times_s) >= len(full.times_s) * 0.8
