from __future__ import annotations

import dataclasses

import pytest
from cotune.kernels.c_matmul.kernel import CMatmul
from cotune.tuner.errors import SpecError
from cotune.tuner.space.search_space import load_space
from cotune.tuner.types import Config, Problem


def test_shipped_space_loads_and_expands_pow2():
    space = CMatmul().space()
    assert dict((p.name, p.values) for p in space.params)["TILE_M"] == (4, 8, 16, 32, 64, 128, 256)
    assert space.size == 7 * 7 * 7 * 4 * 3


def test_constraints_prune_with_reason(cpu):
    space = CMatmul().space()
    problem = Problem.make("c_matmul", {"M": 16, "N": 512, "K": 512}, "fp32")
    big = Config.make({"TILE_M": 64, "TILE_N": 8, "TILE_K": 4, "UNROLL": 1, "LOOP_ORDER": "ikj"})
    assert "TILE_M <= problem.M violated" in space.violation(big, problem, cpu)
    huge = Config.make({"TILE_M": 16, "TILE_N": 512, "TILE_K": 256, "UNROLL": 1, "LOOP_ORDER": "ikj"})
    small_l2 = dataclasses.replace(cpu, l2_bytes=512 * 1024)  # the predicate reads the profile, not this host
    problem = Problem.make("c_matmul", {"M": 512, "N": 512, "K": 512}, "fp32")
    assert space.violation(huge, problem, small_l2).startswith("tiles_fit_l2")


def test_unknown_key_names_file_line_and_key(write):
    path = write("s.yaml", "kernel: c_matmul\nparams:\n  TILE_M: {pow2: [4, 8]}\n  TILE_N: {values: [8], step: 2}\n")
    with pytest.raises(SpecError) as exc:
        load_space(path, predicates={})
    msg = str(exc.value)
    assert f"{path}:4" in msg and "params.TILE_N" in msg


def test_unknown_top_level_key(write):
    path = write("s.yaml", "kernel: c_matmul\nparams:\n  A: {values: [1]}\nconstrains: []\n")
    with pytest.raises(SpecError, match=r"s.yaml:4: constrains: unknown key"):
        load_space(path, predicates={})


def test_unknown_predicate_and_operand_rejected(write):
    bad_pred = write("p.yaml", "kernel: k\nparams:\n  A: {values: [1]}\nconstraints:\n  - {predicate: nope}\n")
    with pytest.raises(SpecError, match=r"p.yaml:5: .*unknown predicate 'nope'"):
        load_space(bad_pred, predicates={})
    bad_ref = write("r.yaml", "kernel: k\nparams:\n  A: {values: [1]}\nconstraints:\n  - {lhs: B, op: '<=', rhs: 4}\n")
    with pytest.raises(SpecError, match="unknown operand 'B'"):
        load_space(bad_ref, predicates={})


def test_pow2_bounds_checked(write):
    path = write("s.yaml", "kernel: k\nparams:\n  A: {pow2: [3, 8]}\n")
    with pytest.raises(SpecError, match="powers of two"):
        load_space(path, predicates={})
