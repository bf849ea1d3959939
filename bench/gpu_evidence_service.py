"""The worker step of bench/gpu_evidence.py: one small job through a real ``cotune worker [--gpu 0]`` on its
hardware's queue, with a PostgreSQL and a Redis started here from binaries, since the lent GPU machines have
neither and no package registry (docs/gpu-evidence.md says what to bring along).

The job is submitted as ``cotune submit`` does (studies, job record, tickets on the queue) except that it opens
no MLflow runs: MLflow is not on the GPU machine, and a job without a tracking URI logs to none. Everything the
worker does is the service's own code: Celery's prefork pool on the GPU queue, the job store's leases on
PostgreSQL, the Optuna journal on PostgreSQL, the candidate process on the GPU.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / ".gpu-tools"  # brought along by `pack` (docs/gpu-evidence.md): redis/ and a pgserver wheel
PGSERVER = "pgserver==0.1.4"  # a manylinux PostgreSQL build that needs only glibc and zlib
WHEELS = REPO / ".whl"  # what the GPU machine's python lacks (its torch, triton, numpy, typer, rich... are there)
# ../shared/tools/device-wheels' list (Optuna, pydantic and their needs) plus the worker step's Celery, Redis and
# PostgreSQL clients; each at the version installed here, where the tests pass
BRING = ("optuna", "alembic", "sqlalchemy", "colorlog", "mako", "greenlet", "pydantic", "pydantic-core",
         "typing-extensions", "annotated-types", "typing-inspection", "celery", "kombu", "billiard", "vine", "amqp",
         "click-repl", "click-didyoumean", "click-plugins", "prompt-toolkit", "wcwidth", "tzlocal", "redis",
         "psycopg2-binary")  # fmt: skip
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
GLIBC = ("linux-vdso", "ld-linux", "libc.so", "libm.so", "libpthread", "libdl.so", "librt.so", "libstdc++", "libgcc_s")
UNPRIVILEGED = "nobody"  # PostgreSQL refuses to run as root, and the lent machines run commands as root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_binary() -> tuple[Path, dict[str, str]]:
    """The redis-server to run and the environment it needs (its own libraries where it was brought along)."""
    brought = TOOLS / "redis" / "redis-server"
    if brought.exists():
        libs = str(TOOLS / "redis" / "lib")
        return brought, {"LD_LIBRARY_PATH": os.pathsep.join(filter(None, [libs, os.environ.get("LD_LIBRARY_PATH")]))}
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(f"no redis-server: bring one along in {brought} (docs/gpu-evidence.md) or install it")
    return Path(found), {}


def postgres_bin(workdir: Path) -> Path:
    """A PostgreSQL bin/ folder: the brought pgserver wheel's build unpacked into ``workdir``, or this machine's."""
    wheels = sorted(TOOLS.glob("pgserver-*.whl"))
    if wheels:
        import zipfile

        with zipfile.ZipFile(wheels[-1]) as whl:
            for name in whl.namelist():
                if name.startswith(("pgserver/pginstall/", "pgserver.libs/")):  # the build, its libraries
                    whl.extract(name, workdir)
        root = workdir / "pgserver" / "pginstall"
        for path in (root / "bin").iterdir():
            path.chmod(0o755)  # a zip keeps no permissions
        return root / "bin"
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    raise RuntimeError(f"no PostgreSQL: run `python bench/gpu_evidence_service.py pack` to bring one along in {TOOLS}")


def pack() -> None:
    """Here, with a registry: download into .whl/ the wheels the GPU machine lacks (Python 3.12, x86-64), and put
    in .gpu-tools/ this machine's redis-server with the libraries it needs beyond glibc and the pgserver wheel
    (a PostgreSQL build needing only glibc and zlib). .gitignore keeps both out of git; the device tool's
    ``carry`` takes them along."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in BRING:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:  # not needed here (greenlet: SQLAlchemy 2.1 wants it only for asyncio)
            print(f"not installed here, not brought: {name}")
    target = ["--python-version", "3.12", "--implementation", "cp", *(a for p in PLATFORMS for a in ("--platform", p))]
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *target]
    subprocess.run([*pip, "-d", str(WHEELS), *pins], check=True)
    redis = Path(shutil.which("redis-server") or "/usr/bin/redis-server")
    lib = TOOLS / "redis" / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    shutil.copy2(redis.resolve(), TOOLS / "redis" / "redis-server")
    ldd = subprocess.run(["ldd", str(redis)], capture_output=True, text=True, check=True).stdout
    for line in ldd.splitlines():
        parts = line.split("=>")
        if len(parts) == 2 and parts[1].split() and not any(g in line for g in GLIBC):
            shutil.copy2(Path(parts[1].split()[0]).resolve(), lib / parts[0].strip())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            "--platform",
            "manylinux2014_x86_64",
            "-d",
            str(TOOLS),
            PGSERVER,
        ],
        check=True,
    )
    print(subprocess.run(["du", "-sh", str(WHEELS), str(TOOLS)], capture_output=True, text=True).stdout.strip())


class Services:
    """A throwaway PostgreSQL and Redis on free ports, stopped on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.pg_port, self.redis_port = free_port(), free_port()

    def __enter__(self) -> Services:
        try:
            self._start_redis()
            self._start_postgres()
            wait_for(lambda: listening(self.redis_port), 30, "redis-server")
            wait_for(lambda: listening(self.pg_port), 60, "postgres")
        except BaseException:
            self.__exit__()  # what started must not outlive a failed start
            raise
        return self

    def _start_redis(self) -> None:
        redis, env = redis_binary()
        cmd = [str(redis), "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.procs.append(
            subprocess.Popen(
                [*cmd, "--dir", str(self.workdir)],
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        )

    def _start_postgres(self) -> None:
        bin_dir = postgres_bin(self.workdir)  # unpacked into workdir, which the unprivileged user can reach
        root = os.geteuid() == 0
        data, sockets = self.workdir / "pgdata", self.workdir / "pgsock"
        sockets.mkdir()
        if root:
            import pwd

            user = pwd.getpwnam(UNPRIVILEGED)
            os.chmod(self.workdir, 0o755)
            os.chown(sockets, user.pw_uid, user.pw_gid)
            for path in self.workdir.glob("pgserver/**/*"):
                path.chmod(path.stat().st_mode | 0o005)
        run_as = {"user": UNPRIVILEGED} if root else {}
        data.mkdir(mode=0o700)
        if root:
            os.chown(data, user.pw_uid, user.pw_gid)
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            cwd=self.workdir,
            **run_as,
        )
        self.procs.append(
            subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.pg_port),
                    "-k",
                    str(sockets),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=100",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                **run_as,
            )
        )

    def env(self) -> dict[str, str]:
        broker = f"redis://127.0.0.1:{self.redis_port}/0"
        return {
            "COTUNE_BROKER_URL": broker,
            "COTUNE_RESULT_BACKEND": broker,
            "MLFLOW_TRACKING_URI": "",
            "COTUNE_STORAGE": f"postgresql+psycopg2://postgres@127.0.0.1:{self.pg_port}/postgres",
        }

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def submit_without_mlflow(spec_text: str, hardware: str, env: dict[str, str]) -> str:
    """``cotune submit`` minus the MLflow parent runs: studies, the job record and its tickets on the queue."""
    import optuna
    from cotune.tuner.device.profiles import CPU_KIND, cpu_profile, recorded_profile
    from cotune.tuner.errors import CotuneError
    from cotune.tuner.measure.objective import directions
    from cotune.tuner.measure.registry import get_kernel
    from cotune.tuner.spec.job import parse_spec
    from cotune.tuner.spec.settings import ServiceSettings
    from cotune.tuner.store.jobs import JobStore, new_job_id
    from cotune.tuner.store.studies import open_storage
    from cotune.worker.app import make_app
    from cotune.worker.dispatch import check_broker, send_tickets, service_study_name, study_budget

    settings = ServiceSettings.from_env(env)
    spec, app, store = parse_spec(spec_text), make_app(settings), JobStore(settings.storage)
    check_broker(app)
    kernel = get_kernel(spec.kernel)
    try:
        profile = cpu_profile() if hardware == CPU_KIND else recorded_profile(hardware)
    except CotuneError:
        profile = None
    job_id, storage, rows = new_job_id(), open_storage(settings.storage), []
    for problem in spec.expand():
        name = service_study_name(job_id, problem.key, hardware)
        optuna.create_study(storage=storage, study_name=name, directions=directions(spec.objective))
        budget = study_budget(spec.budget.trials, kernel, kernel.space(), problem, profile)
        rows.append((name, problem.to_json(), budget, None))
    job_id, tickets = store.create_job(
        spec.name, hardware, spec.model_dump(mode="json"), None, rows, None, job_id=job_id
    )
    send_tickets(app, store, hardware, tickets)
    return job_id


def best_of(record: dict, storage_url: str) -> list:
    """Each study's best measured config and time, read from the job's Optuna storage."""
    import optuna
    from cotune.tuner.store.studies import open_storage

    storage, out = open_storage(storage_url, create=False), []
    for s in record["studies"]:
        study = optuna.load_study(study_name=s["name"], storage=storage)
        try:
            out.append({"study": s["name"], "params": study.best_params, "time_s": study.best_value})
        except ValueError:
            out.append({"study": s["name"], "params": None, "time_s": None})
    return out


def worker_job(out_dir: Path, gpu: bool, timeout_s: float = 240) -> dict:
    """Start the services and one worker, run a 4-trial job on the worker's queue, and report how it ended."""
    from cotune.tuner.device.profiles import CPU_KIND, gpu_name, slugify

    hardware = slugify(gpu_name(0)) if gpu else CPU_KIND
    spec = (
        "name: evidence-worker\nkernel: triton_matmul\nproblems: [{M: 16, N: 8192, K: 8192}]\nprecisions: [bf16]\n"
        if gpu
        else "name: evidence-worker\nkernel: c_matmul\nproblems: [{M: 32, N: 32, K: 32}]\n"
    ) + "budget: {trials: 4}\nsampler: {name: cotune, seed: 0}\n"
    from cotune.tuner.spec.settings import ServiceSettings
    from cotune.tuner.store.jobs import JobStore

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cotune-worker-") as tmp, Services(Path(tmp)) as services:
        env = {**os.environ, **services.env()}
        log = (out_dir / "worker.log").open("w")
        cmd = [sys.executable, "-m", "cotune.tuner.cli.main", "worker", *(["--gpu", "0"] if gpu else [])]
        worker = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            job_id = submit_without_mlflow(spec, hardware, env)
            store = JobStore(ServiceSettings.from_env(env).storage)
            record: dict = {}

            def ended() -> bool:
                record.update(store.record(job_id))
                return record["state"] in ("succeeded", "failed", "cancelled") or worker.poll() is not None

            wait_for(ended, timeout_s, f"job {job_id} on the worker")
            result = {
                "hardware": hardware,
                "worker_command": " ".join(["cotune", *cmd[3:]]),
                "worker_exit": worker.poll(),
                "job": job_id,
                "state": record["state"],
                "error": record["error"],
                "trials": record["trials"],
                "best": best_of(record, ServiceSettings.from_env(env).storage),
            }
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
            log.close()
    return {**result, "seconds": round(time.monotonic() - start, 1)}


if __name__ == "__main__":
    if sys.argv[1:] != ["pack"]:
        sys.exit("usage: python bench/gpu_evidence_service.py pack")
    pack()
