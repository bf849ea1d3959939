"""The candidate process and the compile pool start ahead of the first trial and load the kernel's toolchain
first, so the study is set up while they import; a runner without ``warm`` still starts on its first run."""

from __future__ import annotations

import time

from cotune.tuner.measure.isolation import CandidateRunner, Request
from cotune.tuner.measure.kernel import BenchSettings
from cotune.tuner.measure.precompile import Precompiler
from cotune.tuner.types import Config, Measurement, Problem

PROBLEM = Problem.make("c_matmul", {"M": 32, "N": 32, "K": 32}, "fp32")
CONFIG = Config.make({"TILE_M": 16, "TILE_N": 16, "TILE_K": 16, "UNROLL": 1, "LOOP_ORDER": "ikj"})


def test_a_warm_runner_starts_its_child_on_entering_and_measures(cpu) -> None:
    with CandidateRunner(warm="c_matmul") as runner:
        assert runner._proc is not None and runner._proc.poll() is None  # started before any request
        out = runner.run(Request(PROBLEM, CONFIG, cpu, BenchSettings(repeats=2, timeout_s=60)))
        assert isinstance(out, Measurement)
    assert runner._proc is None


def test_a_plain_runner_starts_nothing_until_its_first_run(cpu) -> None:
    with CandidateRunner() as runner:
        assert runner._proc is None
        assert isinstance(runner.run(Request(PROBLEM, CONFIG, cpu, BenchSettings(repeats=2))), Measurement)


def test_a_warm_pool_starts_every_process_at_once(cpu) -> None:
    """Each pool process loaded the toolchain before any config was submitted; then compiles go through."""
    with Precompiler(2, warm="c_matmul") as pool:
        deadline = time.monotonic() + 120
        while not all(f.done() for f in pool._warming) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [f.result() for f in pool._warming] == [None, None]
        assert len(pool._pool._processes) == 2
        pool.submit(PROBLEM, CONFIG, cpu)
        assert pool.result(PROBLEM, CONFIG, timeout_s=120) is None  # it compiled
