"""Compiles upcoming candidates in a pool of processes while the current one is timed.

On a GPU, compiling a Triton or NVRTC candidate takes seconds and timing it a fraction of a second, so a
serial loop leaves the GPU idle most of the time. The driver asks a few trials ahead and hands their
configs to this pool; each pool process runs the kernel's :meth:`~cotune.tuner.measure.kernel.Kernel.precompile`, which
fills the compiler's on-disk cache that the timing process then reads. A config that fails to compile
fails its trial here, without a round trip through the timing process. Pool processes are spawned (CUDA
does not survive fork) and a pool process that dies only costs the configs it held: they are compiled
again, in the timing process, as if there were no pool.

With ``warm=<kernel>`` every pool process is started at once and loads that kernel's toolchain (torch and
Triton for a Triton kernel), so the pool is ready by the time the first configs are asked ahead, rather
than spawning, and importing, as they arrive.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from cotune.tuner.measure.kernel import CandidateError
from cotune.tuner.types import Config, DeviceProfile, Failure, FailureKind, Problem


def precompile_one(problem: Problem, config: Config, device: DeviceProfile) -> tuple[FailureKind, str] | None:
    """(kind, message) when the config fails to compile; None when it compiled or the compile itself broke."""
    from cotune.tuner.measure.registry import get_kernel

    try:
        get_kernel(problem.kernel).precompile(problem, config, device)
    except CandidateError as exc:
        return exc.kind, str(exc)
    except Exception:  # noqa: BLE001 - a precompile bug must not fail the trial: measure() compiles again
        return None
    return None


def warm_up(kernel: str) -> None:
    """Load a kernel's toolchain in a pool process ahead of its first compile."""
    from cotune.tuner.measure.registry import get_kernel

    get_kernel(kernel).toolchain()


class Precompiler:
    def __init__(self, workers: int, warm: str | None = None) -> None:
        self.workers = workers
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        # keyed by problem and config: a pool serves every problem of a job, and a compile is per shape
        self._futures: dict[tuple[str, str], Future] = {}
        # one per process: the executor starts a process for each task while none is idle
        self._warming = [self._pool.submit(warm_up, warm) for _ in range(workers)] if warm else []

    def __enter__(self) -> Precompiler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, problem: Problem, config: Config, device: DeviceProfile) -> None:
        key = (problem.key, config.key)
        if key not in self._futures:
            try:
                self._futures[key] = self._pool.submit(precompile_one, problem, config, device)
            except BrokenProcessPool:
                pass

    def result(self, problem: Problem, config: Config, timeout_s: float) -> Failure | None:
        """The compile failure of a submitted config, or None when it compiled, was never submitted, or its
        pool process died or ran out of time (the timing process then compiles it and judges it)."""
        future = self._futures.pop((problem.key, config.key), None)
        if future is None:
            return None
        try:
            out = future.result(timeout=timeout_s)
        except Exception:  # noqa: BLE001 - TimeoutError, BrokenProcessPool: fall back to compiling in measure()
            future.cancel()
            return None
        return None if out is None else Failure(out[0], out[1])

    def forget(self, problem: Problem) -> None:
        """Drop a finished problem's compiles that nobody will time; one already running ends on its own."""
        for key in [k for k in self._futures if k[0] == problem.key]:
            self._futures.pop(key).cancel()

    def close(self) -> None:
        busy = [f for f in [*self._futures.values(), *self._warming] if not f.cancel() and not f.done()]
        self._futures.clear()
        # A compile still running (or hung) for a config nobody will time is not waited for: the executor
        # has no public way to stop a busy process, so its processes are killed.
        if busy:
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.kill()
        self._pool.shutdown(wait=not busy, cancel_futures=True)
