"""Runs candidates in a long-lived child process, so a segfault or a hang fails one trial, not the tuner.

The child is started with ``spawn`` (CUDA does not survive ``fork``) and reused across candidates; after a
crash or a timeout it is killed and a fresh one is started for the next candidate.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from tuner.kernel import BenchSettings, CandidateError
from tuner.types import Config, DeviceProfile, Failure, FailureKind, Measurement, Problem

_STARTUP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Request:
    problem: Problem
    config: Config
    device: DeviceProfile
    bench: BenchSettings


def _serve(conn: Connection) -> None:
    """Child main loop: measure each request and answer with ("ok", measurement) or ("fail", kind, msg)."""
    from tuner.registry import get_kernel

    conn.send(("ready",))
    while True:
        try:
            req: Request | None = conn.recv()
        except EOFError:
            return
        if req is None:
            return
        try:
            kernel = get_kernel(req.problem.kernel)
            m = kernel.measure(req.problem, req.config, req.device, req.bench)
            conn.send(("ok", m))
        except CandidateError as exc:
            conn.send(("fail", exc.kind, str(exc)))
        except Exception as exc:  # a kernel bug is one failed trial, reported with its traceback tail
            tail = traceback.format_exc(limit=3).strip().splitlines()[-1]
            conn.send(("fail", FailureKind.RUNTIME, f"{type(exc).__name__}: {exc} ({tail})"))


class CandidateRunner:
    """Measures candidates in an isolated child process. Not thread safe; one runner per driver."""

    def __init__(self) -> None:
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None

    def __enter__(self) -> CandidateRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> Connection:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child,), daemon=True, name="cotune-candidate")
        proc.start()
        child.close()
        if not parent.poll(_STARTUP_TIMEOUT_S):
            proc.kill()
            raise RuntimeError("candidate process did not start")
        parent.recv()
        self._proc, self._conn = proc, parent
        return parent

    def run(self, request: Request) -> Measurement | Failure:
        conn = self._conn or self._start()
        try:
            conn.send(request)
            if not conn.poll(request.bench.timeout_s):
                self._kill()
                return Failure(FailureKind.TIMEOUT, f"no result within {request.bench.timeout_s:g} s")
            reply = conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return Failure(FailureKind.CRASH, self._death_reason())
        if reply[0] == "ok":
            return reply[1]
        return Failure(reply[1], reply[2])

    def _death_reason(self) -> str:
        proc = self._proc
        self._proc = self._conn = None
        proc.join(timeout=5)
        code = proc.exitcode
        if code is not None and code < 0:
            return f"candidate process killed by signal {signal.Signals(-code).name}"
        return f"candidate process exited with code {code}"

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(timeout=5)
        self._proc = self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(timeout=5)
        self._kill()
