"""Starting a local service stack for tests and benchmarks: a private Redis, an MLflow tracking server and
real ``cotune worker`` processes. PostgreSQL is expected to be running already.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
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
    """A redis-server of our own that keeps nothing on disk, like the broker of a fresh machine; with
    ``password``, one that answers only clients that send it (``requirepass``)."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.password = password
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}/0"

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
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._pings, 10, "redis-server")

    def _pings(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                if self.password:
                    s.sendall(f"AUTH {self.password}\r\n".encode())
                    if not s.recv(16).startswith(b"+OK"):
                        return False
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

    def start_worker(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``cotune worker`` with the service's environment, ``env`` overriding some of it."""
        log = open(self.workdir / f"{name}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cotune.tuner.cli", "worker", "--name", f"{name}@test", "--loglevel", "INFO"],
            env={**self.env, **(env or {})},
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

    def cli(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cotune.tuner.cli", *args],
            env={**self.env, **(env or {})},
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


class ApiServer:
    """A real ``cotune api`` process (uvicorn, its submit processes), its output in ``<name>.log``."""

    def __init__(self, env: dict[str, str], workdir: Path, *args: str, name: str = "api") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"{name}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cotune.tuner.cli", "api", "--port", str(self.port), *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a kill takes its submit processes with it
            )
        wait_for(self._up, 120, f"cotune api ({self.log})")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"cotune api exited {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            return urllib.request.urlopen(f"{self.url}/openapi.json", timeout=2).status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the API and its submit processes, as a machine that loses power would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class TcpProxy:
    """A TCP forwarder to ``target`` port that can be cut (listener closed, every connection dropped) and
    restored on the same port: a database outage as its clients see it, without stopping the database
    that other tests share."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
