"""Known-good seeds in a space file: validated with file and line, measured first where the problem admits
them (a precision's own seeds before those for any), and held to a quarter of the trial budget."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from cotune.kernels.c_matmul.kernel import CMatmul
from cotune.tuner.driver import tune_job
from cotune.tuner.errors import SpecError
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.space.search_space import load_space
from cotune.tuner.spec.job import parse_spec
from cotune.tuner.track.tracker import NullTracker
from cotune.tuner.types import Config, Problem

BASE = Path(CMatmul().space().source).read_text()
SPACE = (
    BASE
    + """
seeds:
  any:
    - {TILE_M: 8, TILE_N: 16, TILE_K: 8, UNROLL: 2, LOOP_ORDER: ikj}
    - {TILE_M: 64, TILE_N: 16, TILE_K: 8, UNROLL: 1, LOOP_ORDER: ijk}  # TILE_M > M=16: not for this problem
    - {TILE_M: 4, TILE_N: 8, TILE_K: 4, UNROLL: 1, LOOP_ORDER: kij}
  fp32:
    - {TILE_M: 16, TILE_N: 32, TILE_K: 16, UNROLL: 4, LOOP_ORDER: ikj}
"""
)
JOB = """
name: seeded
kernel: c_matmul
problems: [{{M: 16, N: 64, K: 64}}]
budget: {{trials: {trials}}}
sampler: {{name: random, seed: 3, transfer: false}}
top_k: 1
bench: {{warmup: 0, repeats: 2, remeasure_repeats: 2}}
search_space: {space}
"""
FP32 = {"TILE_M": 16, "TILE_N": 32, "TILE_K": 16, "UNROLL": 4, "LOOP_ORDER": "ikj"}
ANY_0 = {"TILE_M": 8, "TILE_N": 16, "TILE_K": 8, "UNROLL": 2, "LOOP_ORDER": "ikj"}
ANY_2 = {"TILE_M": 4, "TILE_N": 8, "TILE_K": 4, "UNROLL": 1, "LOOP_ORDER": "kij"}


@pytest.mark.parametrize(("trials", "first"), [(8, [FP32, ANY_0]), (12, [FP32, ANY_0, ANY_2])])
def test_seeds_are_measured_first_up_to_a_quarter_of_the_budget(tmp_path, cpu, write, trials, first) -> None:
    space = write("space.yaml", SPACE)
    url = f"sqlite:///{tmp_path}/o.db"
    [outcome] = tune_job(parse_spec(JOB.format(trials=trials, space=space)), url, cpu, NullTracker())
    study = optuna.load_study(study_name=outcome.study_name, storage=url)
    assert [t.params for t in study.trials[: len(first)]] == first
    assert all(t.state is optuna.trial.TrialState.COMPLETE for t in study.trials[: len(first)])
    assert outcome.measured == trials  # the seeds are part of the budget, not on top of it


def test_the_shipped_matmul_seeds_put_fp8_configs_first_for_fp8() -> None:
    from cotune.tuner.device.profiles import recorded_profile

    space = get_kernel("triton_matmul").space()
    h100 = recorded_profile("NVIDIA H100 80GB HBM3")
    shape = {"M": 4096, "N": 8192, "K": 8192}
    fp8 = space.known_good(Problem.make("triton_matmul", shape, "fp8"), h100, 24)
    bf16 = space.known_good(Problem.make("triton_matmul", shape, "bf16"), h100, 24)
    assert len(fp8) == len(bf16) == 6
    # on Hopper the persistent TMA seeds come first, then the tutorial's, fp8 entries first
    assert [c["KERNEL"] for c in fp8[:3]] == ["persistent_tma", "persistent_tma_ws", "tutorial"]
    assert fp8[3] == Config.make(
        {"KERNEL": "tutorial", "BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "SPLIT_K": 1}
        | {"num_warps": 8, "num_stages": 3}
    )  # the tutorial's fp8 entry that matched cuBLAS on an H100 (docs/benchmarks.md)
    assert all(c["BLOCK_K"] >= 32 for c in fp8) and fp8 != bf16
    # a decode batch admits no tutorial tile (all have BLOCK_M >= 32): the search has the whole budget
    assert space.known_good(Problem.make("triton_matmul", {**shape, "M": 16}, "bf16"), h100, 24) == []


@pytest.mark.parametrize(
    ("seed", "error"),
    [
        ("{TILE_M: 8, TILE_N: 16, TILE_K: 8, UNROLL: 2}", r"s.yaml:\d+: seeds.any.0: missing LOOP_ORDER"),
        (
            "{TILE_M: 8, TILE_N: 16, TILE_K: 8, UNROLL: 2, LOOP_ORDER: ikj, TILE_Q: 2}",
            r"seeds.any.0: unknown param TILE_Q",
        ),
        ("{TILE_M: 6, TILE_N: 16, TILE_K: 8, UNROLL: 2, LOOP_ORDER: ikj}", r"seeds.any.0.TILE_M: 6 is not one of"),
        ("{TILE_M: 8, TILE_N: 16, TILE_K: 8, UNROLL: true, LOOP_ORDER: ikj}", r"seeds.any.0.UNROLL: True is not"),
    ],
)
def test_a_bad_seed_names_the_file_line_and_param(write, seed, error) -> None:
    path = write("s.yaml", f"{BASE}seeds:\n  any:\n    - {seed}\n")
    with pytest.raises(SpecError, match=error):
        load_space(path, predicates=CMatmul.predicates)


def test_seeds_for_an_unknown_precision_are_refused(write) -> None:
    path = write("s.yaml", f"{BASE}seeds:\n  fp9:\n    - {{TILE_M: 8}}\n")
    with pytest.raises(SpecError, match=r"s.yaml:\d+: seeds.fp9: not a precision; known: any, fp32"):
        load_space(path, predicates=CMatmul.predicates)


def test_validate_counts_the_seeds_and_names_a_bad_one(tmp_path, write) -> None:
    from tests.cli import cotune

    space = write("space.yaml", SPACE)
    write("spec.yaml", JOB.format(trials=8, space=space))
    ok = cotune("validate", "spec.yaml", cwd=tmp_path)
    assert ok.returncode == 0 and "4 known-good seed(s)" in " ".join(ok.stdout.split()), ok.stdout
    write("space.yaml", SPACE.replace("UNROLL: 4", "UNROLL: 3"))
    bad = cotune("validate", "spec.yaml", cwd=tmp_path)
    assert bad.returncode != 0 and "seeds.fp32.0.UNROLL: 3 is not one of" in " ".join(bad.stderr.split()), bad.stderr
    assert "Traceback" not in bad.stderr
