"""Starting a local service stack for tests and benchmarks: a private Redis, an MLflow tracking server and
real ``cotune worker`` processes. PostgreSQL is expected to be running already.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REDIS_SERVER = "redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class RedisServer:
    """A redis-server of our own that keeps nothing on disk, like the broker of a fresh machine."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._pings, 10, "redis-server")

    def _pings(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class MlflowServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(root / "server.log", "w")
        self.start()

    def start(self) -> None:
        """Start the server, again after ``stop`` too: same port, same store."""
        root = self.root
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{root}/mlflow.db",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # MLflow 3's job runner (a huey consumer) polls and takes half a core here; cotune uses no MLflow jobs.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        wait_for(self._healthy, 60, "the MLflow server")

    def _healthy(self) -> bool:
        try:
            return urllib.request.urlopen(f"{self.url}/health", timeout=1).status == 200
        except OSError:
            return False

    def stop(self, close_log: bool = True) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=20)
        if close_log:
            self._log.close()


@dataclass
class Service:
    env: dict[str, str]
    workdir: Path
    redis: RedisServer
    workers: list[subprocess.Popen] = field(default_factory=list)
    mlflow_log: Path | None = None

    def start_worker(self, name: str) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cotune.tuner.cli", "worker", "--name", f"{name}@test", "--loglevel", "INFO"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill -9 takes the pool and candidate with it
        )
        self.workers.append(proc)
        wait_for(lambda: "ready." in (self.workdir / f"{name}.log").read_text(), 60, f"worker {name}")
        return proc

    def kill_worker(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cotune.tuner.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def tickets(self, job: str) -> list[dict]:
        """The job's ticket rows, in the order they were made."""
        import sqlalchemy as sa
        from cotune.tuner.store.job_tables import tickets
        from cotune.tuner.store.jobs import JobStore

        with JobStore(self.env["COTUNE_STORAGE"]).engine.connect() as c:
            q = sa.select(tickets).where(tickets.c.job_id == job).order_by(tickets.c.id)
            return [dict(r) for r in c.execute(q).mappings()]

    def diagnosis(self, job: str, lines: int = 40) -> str:
        """What a failed service test needs to be understood from CI output alone: the job's tickets and
        the tail of every worker's log and of the MLflow server's."""
        out = [f"tickets of {job}:", *(f"  {t}" for t in self.tickets(job))]
        logs = sorted(self.workdir.glob("*.log")) + ([self.mlflow_log] if self.mlflow_log else [])
        for log in logs:
            out.append(f"--- last {lines} lines of {log.name}:")
            out += log.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
