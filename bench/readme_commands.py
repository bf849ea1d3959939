"""Every command of the README, from a fresh clone in a fresh venv, in the README's order, each timed.

    python bench/readme_commands.py [--out bench/results/readme_commands.json] [--keep DIR]

Each command is checked to appear word for word in README.md first, so the file measures what a user reads
(a README edit that changes a command makes this script stop with the command it no longer finds). The
clone is of this repository's HEAD; pip takes packages from the configured index. The service block needs
what the README says it needs: PostgreSQL on 127.0.0.1:5432 (trust auth), Redis on 127.0.0.1:6379, and
ports 5000 and 8000 free. The README's test command is not run here: `bench/test_under_load.py` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from test_under_load import machine  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

# Each as the README writes it; run with bash in the clone.
LOCAL = [
    "pip install torch==2.13.0 && pip install -e . && "
    "cotune tune examples/cpu_matmul.yaml --export cotune-runs/best.json",
    "cotune export cpu-matmul-demo -o best.json",
    "cotune report cpu-matmul-demo -o report/report.html",
    "cotune validate spec.yaml --device nvidia-h100-80gb-hbm3",
    "pip install triton",
    "cotune plan models/tiny-moe.json --tp 2 --batch 1 --batch 4 --batch 16 --trials 6 -o plan",
    "cotune tune plan/tiny-moe-moe.yaml",
    "cotune export tiny-moe-moe --format vllm -o configs/",
    "cotune plan models/mixtral-8x7b.json --tp 2 -o plan8x7b",
    "cotune revalidate best.json",
    "cotune replay bench/results/replay_h100/triton_moe_bf16_E8_K4096_M16_N14336_topk2_nvidia-h100-80gb-hbm3.json.gz"
    " --budget 50",
    "cotune kernels",
    "cotune status",
]
SERVICE_INSTALL = "pip install torch==2.13.0 && pip install -e '.[service]'"
MLFLOW_SERVER = (
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --backend-store-uri sqlite:///cotune-runs/mlflow-server.db"
    " --port 5000"
)
BACKGROUND = ["cotune worker", "cotune api --port 8000"]
SUBMIT = "cotune submit examples/cpu_matmul.yaml"
AFTER_SUBMIT = ["cotune watch $JOB", "cotune export $JOB -o best.json", "cotune status", "cotune jobs"]


def in_readme(command: str) -> str:
    # The README names `jobs` among the service's commands without writing the line out.
    if command not in README and command != "cotune jobs":
        raise SystemExit(f"not in README.md any more: {command}")
    return command


def gpu_spec() -> str:
    block = re.search(r"```yaml\n(.*?)```", README, re.S)
    if block is None:
        raise SystemExit("README.md has no yaml block (the GPU spec `cotune validate spec.yaml` checks)")
    return block.group(1)


def wait_port(port: int, deadline_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return time.monotonic() - t0
        time.sleep(0.5)
    raise SystemExit(f"nothing answered on port {port} within {deadline_s:.0f} s")


class Runner:
    def __init__(self, clone: Path, env: dict[str, str]) -> None:
        self.clone, self.env = clone, env
        self.steps: list[dict[str, object]] = []

    def run(self, command: str, shown: str | None = None) -> subprocess.CompletedProcess[str]:
        t0 = time.monotonic()
        proc = subprocess.run(["bash", "-c", command], cwd=self.clone, env=self.env, capture_output=True, text=True)
        step = {"command": shown or command, "wall_s": round(time.monotonic() - t0, 1), "returncode": proc.returncode}
        out = (proc.stdout + proc.stderr).strip().splitlines()
        step["output"] = out[-40:]
        self.steps.append(step)
        print(f"{step['wall_s']:7.1f} s  rc {proc.returncode}  {shown or command}", flush=True)
        if proc.returncode != 0:
            raise SystemExit(f"failed: {shown or command}\n" + "\n".join(out[-30:]))
        return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/readme_commands.json")
    parser.add_argument("--keep", type=Path, help="clone here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    for command in [*LOCAL, SERVICE_INSTALL, MLFLOW_SERVER, *BACKGROUND, SUBMIT, *AFTER_SUBMIT]:
        in_readme(command)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    work = args.keep or Path(tempfile.mkdtemp(prefix="cotune-readme-"))
    clone = work / "cotune"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
    env = dict(os.environ, PATH=f"{work / 'venv' / 'bin'}:{os.environ['PATH']}", VIRTUAL_ENV=str(work / "venv"))
    for name in ("COTUNE_STORAGE", "COTUNE_BROKER_URL", "MLFLOW_TRACKING_URI", "COTUNE_API_TOKEN"):
        env.pop(name, None)
    (clone / "spec.yaml").write_text(gpu_spec())
    runner = Runner(clone, env)
    result: dict[str, object] = {
        "benchmark": "every README command from a fresh clone in a fresh venv, in the README's order",
        "command": "python bench/readme_commands.py",
        "date": datetime.now(UTC).date().isoformat(),
        "commit": head.strip(),
        "machine": machine(),
        "steps": runner.steps,
        "completed": False,
    }
    try:
        result["service_ready_s"] = run_all(runner, env, work)
        result["completed"] = True
    finally:
        # What ran is kept, a failed step's output included, whether or not the rest ran.
        result["load_average_at_end"] = os.getloadavg()
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def run_all(runner: Runner, env: dict[str, str], work: Path) -> dict[str, float]:
    clone = runner.clone
    for command in LOCAL:
        runner.run(command)

    runner.run(SERVICE_INSTALL)
    token = secrets.token_urlsafe(32)
    runner.env = dict(
        env,
        COTUNE_STORAGE="postgresql+psycopg2://postgres@127.0.0.1:5432/cotune",
        COTUNE_BROKER_URL="redis://127.0.0.1:6379/0",
        MLFLOW_TRACKING_URI="http://127.0.0.1:5000",
        COTUNE_API_TOKEN=token,
    )
    background: list[subprocess.Popen[bytes]] = []
    try:
        for command in (MLFLOW_SERVER, *BACKGROUND):
            name = command.split()[1] if command.startswith("cotune") else "mlflow"
            with open(work / f"{name}.log", "wb") as log:
                background.append(
                    subprocess.Popen(
                        ["bash", "-c", command],
                        cwd=clone,
                        env=runner.env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        ready = {"mlflow_s": wait_port(5000, 120), "api_s": wait_port(8000, 120)}
        job = runner.run(SUBMIT).stdout.strip()
        for command in AFTER_SUBMIT:
            runner.run(command.replace("$JOB", job), shown=command)
        post = runner.run(
            f"curl -s -w '\\n%{{http_code}}' -X POST http://127.0.0.1:8000/jobs -H 'Authorization: Bearer {token}' "
            "-H 'Content-Type: application/yaml' --data-binary @examples/cpu_matmul.yaml",
            shown="curl -X POST http://127.0.0.1:8000/jobs (the demo spec, with the token)",
        )
        body, status = post.stdout.rsplit("\n", 1)
        runner.steps[-1]["http_status"] = status
        # The REST job only shows the route answers; cancelled so it does not wait in the shared queue.
        runner.run(f"cotune cancel {json.loads(body)['id']}", shown="cotune cancel (the REST job)")
    finally:
        for proc in background:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in background:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    return ready


if __name__ == "__main__":
    main()
