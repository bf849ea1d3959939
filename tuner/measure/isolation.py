"""Runs candidates in a long-lived child process, so a segfault or a hang fails one trial, not the tuner.

The child is a fresh interpreter (CUDA does not survive ``fork``) started with :mod:`subprocess`, not
:mod:`multiprocessing`, so it can be started from anywhere, including a Celery pool process, which
multiprocessing refuses as a daemon. It is reused across candidates; after a crash, a timeout or an
exception that interrupts a request it is killed and a fresh one is started for the next candidate.
Requests and replies are pickled over pipes.

A runner made with ``warm=<kernel>`` starts its child on entering its ``with`` block, without waiting for it,
and the child loads that kernel's toolchain (``Kernel.toolchain()``: torch and Triton for a Triton kernel)
before it reports ready: the driver sets up the study meanwhile, and the first candidate no longer pays
for the imports.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from cotune.tuner.measure.kernel import BenchSettings, CandidateError
from cotune.tuner.types import Config, DeviceProfile, Failure, FailureKind, Measurement, Problem

_STARTUP_TIMEOUT_S = 120.0
log = logging.getLogger("cotune.isolation")


@dataclass(frozen=True)
class Request:
    problem: Problem
    config: Config
    device: DeviceProfile
    bench: BenchSettings


def _serve(conn: Any, warm: str | None = None) -> None:
    """Child main loop: measure each request and answer with ("ok", measurement) or ("fail", kind, msg)."""
    from cotune.tuner.measure.registry import get_kernel

    problem = None
    if warm:
        try:
            get_kernel(warm).toolchain()
        except Exception as exc:  # noqa: BLE001 - only a head start; the parent reads the toolchain itself
            problem = f"{type(exc).__name__}: {exc}"
    conn.send(("ready", problem))
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
            conn.send(("fail", exc.kind, str(exc), exc.restart))
            if exc.restart:
                return
        except Exception as exc:  # a kernel bug is one failed trial, reported with its traceback tail
            tail = traceback.format_exc(limit=3).strip().splitlines()[-1]
            conn.send(("fail", FailureKind.RUNTIME, f"{type(exc).__name__}: {exc} ({tail})", False))


class _Pipes:
    """The parent's ends of the two pipes to a child, as one duplex-looking connection."""

    def __init__(self, reader: Connection, writer: Connection) -> None:
        self.reader, self.writer = reader, writer

    def send(self, obj: Any) -> None:
        self.writer.send(obj)

    def recv(self) -> Any:
        return self.reader.recv()

    def poll(self, timeout: float) -> bool:
        return self.reader.poll(timeout)

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


def _child_main(read_fd: int, write_fd: int, warm: str | None = None) -> None:
    _serve(_Pipes(Connection(read_fd, writable=False), Connection(write_fd, readable=False)), warm)


class CandidateRunner:
    """Measures candidates in an isolated child process. Not thread safe; one runner per driver."""

    def __init__(self, warm: str | None = None) -> None:
        self.warm = warm
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: _Pipes | None = None
        self._ready = False

    def __enter__(self) -> CandidateRunner:
        if self.warm:
            self._spawn()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        code = (
            "from cotune.tuner.measure.isolation import _child_main; "
            f"_child_main({to_child_r}, {from_child_w}, {self.warm!r})"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(to_child_r, from_child_w))
        os.close(to_child_r)
        os.close(from_child_w)
        self._proc = proc
        self._conn = _Pipes(Connection(from_child_r, writable=False), Connection(to_child_w, readable=False))
        self._ready = False

    def _start(self) -> _Pipes:
        """The child's connection once it is ready, starting the child first if none is running."""
        if self._proc is None:
            self._spawn()
        proc, conn = self._proc, self._conn
        assert proc is not None and conn is not None
        if self._ready:
            return conn
        if not conn.poll(_STARTUP_TIMEOUT_S):
            self._kill()
            raise RuntimeError("candidate process did not start")
        try:
            _, problem = conn.recv()
        except EOFError:
            proc.wait()
            self._kill()
            raise RuntimeError(f"candidate process exited at start with code {proc.returncode}") from None
        if problem:
            log.warning("candidate process could not load the toolchain of %s ahead: %s", self.warm, problem)
        self._ready = True
        return conn

    def run(self, request: Request) -> Measurement | Failure:
        try:
            conn = self._start()
            conn.send(request)
            if not conn.poll(request.bench.timeout_s):
                self._kill()
                return Failure(FailureKind.TIMEOUT, f"no result within {request.bench.timeout_s:g} s")
            reply = conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return Failure(FailureKind.CRASH, self._death_reason())
        except BaseException:
            # Left mid-exchange (a Celery soft time limit, Ctrl-C): the child is still measuring, and its late
            # reply would answer the next request. The next candidate gets a fresh child instead.
            self._kill()
            raise
        if reply[0] == "ok":
            return reply[1]
        if reply[3]:  # the child exits after this reply; reap it so the next candidate gets a fresh one
            self._death_reason()
        return Failure(reply[1], reply[2])

    def _death_reason(self) -> str:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        self._ready = False
        assert proc is not None and conn is not None
        conn.close()
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if code is not None and code < 0:
            return f"candidate process killed by signal {signal.Signals(-code).name}"
        return f"candidate process exited with code {code}"

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None
        self._ready = False

    def close(self) -> None:
        if self._conn is not None and self._proc is not None:
            try:
                self._conn.send(None)
                self._proc.wait(timeout=5)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                pass
        self._kill()
