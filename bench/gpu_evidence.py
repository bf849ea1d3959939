"""One prepared, resumable GPU evidence run for one H100/H200 (how to run it: docs/gpu-evidence.md).

    python bench/gpu_evidence.py [--out-dir DIR] [--only STEP ...] [--trials 10] [--deadline-s 420] [--dry-run]

Steps, in this order; each appends rows to DIR/evidence.jsonl as it finishes a unit (a shape, a test run),
so a run cut short keeps what it measured, and a second run skips the units already there (``--only``
reruns the named steps from scratch). Every row names the step, the device, the commit and the date.

  env         the toolchain: GPU, driver, CUDA, torch, Triton, cuda-python, Optuna, Python, commit
  pytest      ``python -m pytest -m gpu`` over the test files that hold GPU tests
  matmul      triton_matmul tuned on the Llama-3-70B shapes (M 16, 128, 4096 x N,K 8192,8192 / 10240,8192 /
              57344,8192 / 8192,28672) in bf16 and fp8, every kernel variant measured first (one config
              each, where the shape admits one), against cuBLAS (torch.matmul, torch._scaled_mm)
  attention   triton_attention tuned against torch.nn.functional.scaled_dot_product_attention
  moe         the fused_moe kernel tuned on MOE_SHAPES; skipped, with a note, while it is not registered
  remeasure   each winner above timed again in a fresh process, with its same-program twins
  trial_time  per-trial wall time and first-trial latency of a 16-trial 4096x8192x8192 bf16 study
  stopwatch   the screening stopwatch's short timing against its full timing, per config
  worker      one small job through a real ``cotune worker --gpu 0`` on its GPU queue, with a PostgreSQL and
              a Redis this script starts from binaries brought along (bench/gpu_evidence_service.py)

``--dry-run`` checks the script on a CPU in under 2 minutes: every step runs its code with what a CPU has
(tiny shapes, c_matmul in place of the GPU kernels, torch on the CPU as the vendor baseline, the GPU tests
collected rather than run, with the packages the GPU machine lacks blocked, each variant's first config
compiled for sm_90, a CPU worker), writing to a temporary folder unless --out-dir is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cotune.tuner.device.profiles import detect, recorded_profile, slugify  # noqa: E402
from cotune.tuner.errors import CotuneError  # noqa: E402
from cotune.tuner.spec.job import JobSpec  # noqa: E402
from cotune.tuner.types import DeviceProfile  # noqa: E402

LLAMA70B_NK = ((8192, 8192), (10240, 8192), (57344, 8192), (8192, 28672))  # o_proj, qkv, gate+up, down (TP1)
LLAMA70B_M = (16, 128, 4096)
ATTENTION_SHAPES = (
    {"batch": 4, "heads": 64, "seq_q": 2048, "seq_k": 2048, "head_dim": 128, "causal": 1},  # Llama-3-70B prefill
)
# The fused-MoE step's shapes, in one place: (precision, dims without M), each at every M of MOE_M.
MOE_KERNEL = "fused_moe"
MOE_M = (1, 16, 64, 256, 1024)
# Both have a file vLLM ships for the H100 (kernels/fused_moe_configs), so each row holds tuned, shipped and default.
MOE_SHAPES = (
    ("bf16", {"E": 8, "H": 4096, "I": 7168, "topk": 2}),  # Mixtral-8x7B, TP2
    ("fp8_block128", {"E": 32, "H": 7168, "I": 2048, "topk": 8}),  # DeepSeek-V3, EP8 (vLLM's block fp8 case)
)
# The dry run's stand-ins: the same dtypes on shapes the interpreter runs in a second (H, I multiples of 128).
MOE_DRY_SHAPES = (
    ("bf16", {"E": 4, "H": 128, "I": 128, "topk": 2}),
    ("fp8_block128", {"E": 4, "H": 128, "I": 128, "topk": 2}),
)
OUT_OF_TIME = "out of the run's time (--deadline-s)"
STEPS = ("env", "pytest", "matmul", "attention", "moe", "remeasure", "trial_time", "stopwatch", "worker")
BENCH = "{warmup: 3, repeats: 20, remeasure_repeats: 50, target_ms: 100, timeout_s: 120, compile_workers: %d}"
# The dry run times each candidate only a little: the CPU stand-ins run under Triton's interpreter.
DRY_BENCH = "{warmup: 0, repeats: 2, remeasure_repeats: 2, timeout_s: 120, compile_workers: %d}"
# Packages the lent GPU machines lack and docs/gpu-evidence.md does not bring: GPU tests must import without.
NOT_ON_GPU_MACHINE = ("mlflow", "fastapi", "uvicorn", "kernel_tuner", "tritonclient", "httpx")


@dataclass
class Run:
    """What every step gets: where rows go, what is done, the device, the mode and the clock."""

    out_dir: Path
    device: DeviceProfile
    dry: bool
    trials: int
    deadline: float
    commit: str
    done: set[tuple[str, str]] = field(default_factory=set)

    @property
    def path(self) -> Path:
        return self.out_dir / "evidence.jsonl"

    @property
    def storage(self) -> str:
        return f"sqlite:///{self.out_dir / 'studies.db'}"

    @property
    def workers(self) -> int:
        return 2 if self.dry else max(1, (os.cpu_count() or 4) - 2)

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    def has(self, step: str, key: str) -> bool:
        return (step, key) in self.done

    def add(self, step: str, key: str, status: str = "ok", **data: object) -> dict:
        row = {
            "step": step,
            "key": key,
            "status": status,
            "device": self.device.name,
            "commit": self.commit,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "dry_run": self.dry,
            **data,
        }
        with self.path.open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        if finished(row):
            self.done.add((step, key))
        print(
            json.dumps({k: v for k, v in row.items() if k not in ("per_step", "output")}, default=str)[:400], flush=True
        )
        return row

    def rows(self, step: str) -> Iterator[dict]:
        """The step's finished rows written so far (this run's and earlier runs')."""
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                row = json.loads(line)
                if row["step"] == step and finished(row):
                    yield row


def finished(row: dict) -> bool:
    """Measured, or skipped for good (a kernel not there); not an error, nor a unit the clock cut."""
    return row["status"] == "ok" or (row["status"] == "skipped" and row.get("reason") != OUT_OF_TIME)


def git_commit() -> str:
    """The checkout's commit (with ``+changes`` when tracked files differ from it); ``unknown`` without git, as on
    the GPU machine, which gets a copy of the working tree: pass ``--commit`` there."""
    if shutil.which("git") is None:
        return "unknown"
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return (out.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def step_env(run: Run) -> None:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "triton", "cuda-bindings", "cuda-core", "optuna", "pydantic", "celery", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    smi = (
        subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,clocks.max.sm,clocks.sm,power.limit",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
        )
        if not run.dry and shutil.which("nvidia-smi")
        else None
    )
    run.add(
        "env",
        "toolchain",
        python=platform.python_version(),
        host=platform.node(),
        cpus=os.cpu_count(),
        packages=versions,
        profile=run.device.to_json(),
        nvidia_smi=smi.stdout.strip() if smi else None,
    )


def gpu_test_files() -> list[str]:
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if "mark.gpu" in p.read_text())


def step_pytest(run: Run) -> None:
    """On a GPU the tests run; in a dry run they are collected with the GPU machine's missing packages blocked,
    which is what made the whole ``-m gpu`` run fail to collect on an H100 before (no MLflow there)."""
    if run.has("pytest", "collect" if run.dry else "run"):
        return
    files = gpu_test_files()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    env = dict(os.environ)
    if run.dry:
        cmd.insert(3, "--collect-only")
        blocker = run.out_dir / "blocker"
        blocker.mkdir(exist_ok=True)
        (blocker / "sitecustomize.py").write_text(
            "import sys\n"
            f"BLOCK = {NOT_ON_GPU_MACHINE!r}\n"
            "class _Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in BLOCK:\n"
            "            raise ImportError(name + ' is not on the GPU machine')\n"
            "sys.meta_path.insert(0, _Block())\n"
        )
        env["PYTHONPATH"] = os.pathsep.join([str(blocker), env.get("PYTHONPATH", "")])
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    run.add(
        "pytest",
        "collect" if run.dry else "run",
        "ok" if proc.returncode == 0 else "error",
        command=" ".join(["python", *cmd[1:]]),
        returncode=proc.returncode,
        summary=tail[-1] if tail else "",
        seconds=round(time.monotonic() - start, 1),
        output=tail[-40:],
    )


def _spec(
    kernel: str, shapes: list[dict[str, int]], precision: str, trials: int, workers: int, dry: bool = False
) -> JobSpec:
    from cotune.tuner.spec.job import parse_spec

    problems = ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in shape.items()) + "}" for shape in shapes)
    return parse_spec(
        f"name: evidence-{kernel}\nkernel: {kernel}\nproblems: [{problems}]\nprecisions: [{precision}]\n"
        f"budget: {{trials: {trials}}}\nsampler: {{name: cotune, seed: 0}}\ntop_k: 3\n"
        f"bench: {(DRY_BENCH if dry else BENCH) % workers}\n"
    )


def variant_priors(kernel, problem, device: DeviceProfile) -> list:  # noqa: ANN001
    """One config per kernel variant, measured first: the variant's first seed the shape admits, else that seed
    with BLOCK_M cut to the batch (a decode shape admits no 64-row tile). None for a variant nothing fits."""
    from cotune.kernels.triton_matmul import variant
    from cotune.tuner.types import Config

    space = kernel.space()
    ordered = [c for p, c in space.seeds if p == problem.dtype.value] + [c for p, c in space.seeds if p == "any"]
    picks: dict[str, Config] = {}
    for seed in ordered:
        m_cover = max(16, 1 << (problem.dims["M"] - 1).bit_length())
        for config in (seed, Config.make({**seed.values, "BLOCK_M": min(int(seed["BLOCK_M"]), m_cover)})):
            if variant(config) not in picks and space.violation(config, problem, device) is None:
                picks[variant(config)] = config
    return list(picks.values())


class _OutOfTime(Exception):
    """Raised from the progress callback to stop a job at the run's deadline; its studies resume next run."""


def tune_rows(
    run: Run,
    step: str,
    kernel_name: str,
    shapes: list[dict[str, int]],
    precision: str,
    baseline: Callable[[dict[str, int]], dict],
) -> None:
    """Tune the shapes not done yet in one job (one candidate process and compile pool for all), each variant's
    first config measured first, and write each shape's row as its study ends: the winner, the best time per
    variant, the baseline. A study the deadline cuts gets an out-of-time row and resumes in the next run."""
    from cotune.tuner.driver import Progress, study_name, tune_job
    from cotune.tuner.measure.registry import get_kernel
    from cotune.tuner.track.tracker import NullTracker
    from cotune.tuner.types import Problem

    kernel = get_kernel(kernel_name)
    todo = {}
    for shape in shapes:
        key = f"{kernel_name}:{precision}:" + ",".join(f"{k}={v}" for k, v in shape.items())
        if not run.has(step, key):
            todo[Problem.make(kernel_name, shape, precision).key] = (key, shape)
    if not todo:
        return
    if run.out_of_time():
        for key, shape in todo.values():
            run.add(step, key, "skipped", reason=OUT_OF_TIME, shape=shape)
        return
    bases = {pkey: baseline(shape) for pkey, (_, shape) in todo.items()}  # the vendor's, before any tuning
    spec = _spec(kernel_name, [shape for _, shape in todo.values()], precision, run.trials, run.workers, run.dry)
    problems = {p.key: p for p in spec.expand()}
    priors = {}
    if kernel_name == "triton_matmul":
        priors = {k: variant_priors(kernel, p, run.device) for k, p in problems.items()}
    current: list[str] = []

    def write(pkey: str) -> None:
        key, shape = todo.pop(pkey)
        problem = problems[pkey]
        row_for_study(run, step, key, shape, kernel, problem, study_name(spec.name, problem, run.device), bases[pkey])

    def on_progress(progress: Progress) -> None:
        if current and current[-1] != progress.problem.key and current[-1] in todo:
            write(current[-1])
        current.append(progress.problem.key)
        if run.out_of_time():
            raise _OutOfTime

    try:
        tune_job(spec, run.storage, run.device, NullTracker(), on_progress=on_progress, priors=priors)
    except _OutOfTime:
        pass
    except CotuneError as exc:
        for key, shape in todo.values():
            run.add(step, key, "error", error=str(exc), shape=shape)
        return
    for pkey in list(todo):
        write(pkey)


def row_for_study(run: Run, step: str, key: str, shape: dict, kernel, problem, name: str, base: dict) -> None:  # noqa: ANN001
    import optuna
    from cotune.tuner.track.tracker import BestLog
    from cotune.tuner.types import Measurement

    try:
        study = optuna.load_study(study_name=name, storage=run.storage)
    except KeyError:
        run.add(step, key, "skipped", reason=OUT_OF_TIME, shape=shape)
        return
    states = optuna.trial.TrialState
    by_variant: dict[str, float] = {}
    for t in study.get_trials(deepcopy=False, states=(states.COMPLETE,)):
        name_ = str(t.params.get("KERNEL", problem.kernel))
        by_variant[name_] = min(by_variant.get(name_, float("inf")), t.value)
    counts = {
        s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in (states.COMPLETE, states.FAIL)
    }
    data = {
        "kernel": problem.kernel,
        "precision": problem.dtype.value,
        "shape": shape,
        "study": name,
        "trials": counts,
        "best_time_s_by_variant": by_variant,
        "baseline": base,
    }
    if "best" not in study.user_attrs:
        run.add(step, key, "skipped", reason=OUT_OF_TIME, **data)  # cut before its re-measure: resumes next run
        return
    best = BestLog.from_json(study.user_attrs["best"])
    t = best.remeasured.median_s
    data |= {
        "winner": best.config.values,
        "tuned_time_s": best.tuned.median_s,
        "time_s": t,
        "spread": best.remeasured.spread,
        "max_rel_error": best.remeasured.max_rel_error,
        "tflops": kernel.flops(problem) / t / 1e12,
    }
    if base.get("time_s"):
        data["vs_baseline"] = base["time_s"] / t  # above 1: faster than the baseline
    served = {}
    for name_, b in study.user_attrs.get("baselines", {}).items():  # the kernel's, re-measured beside the winner
        if "measurement" in b:
            served[name_] = {"config": b["config"], "time_s": Measurement.from_json(b["measurement"]).median_s}
        else:
            served[name_] = {"config": b["config"], "failure": b.get("failure")}
    if served:
        data["server_baselines"] = served
    run.add(step, key, **data)


def step_matmul(run: Run) -> None:
    if run.dry:  # the same code on a CPU kernel; the GPU kernel's variant priors compiled for sm_90 instead
        if not run.has("matmul", "compile_sm90"):
            compile_variant_priors(run)
        shapes = [{"M": m, "N": 64, "K": 64} for m in (16, 32)]
        tune_rows(run, "matmul", "c_matmul", shapes, "fp32", lambda s: cpu_matmul_baseline(s))
        return
    # decode batches first: a trial at M=4096 costs seconds of CPU-side output check (kernels/gpu.py compares
    # on the host), so the deadline, if any, cuts those
    for m in LLAMA70B_M:
        for precision in ("bf16", "fp8"):
            shapes = [{"M": m, "N": n, "K": k} for n, k in LLAMA70B_NK]
            base = lambda s, p=precision: cublas_baseline(s, p, run)  # noqa: E731
            tune_rows(run, "matmul", "triton_matmul", shapes, precision, base)


def cublas_baseline(shape: dict[str, int], precision: str, run: Run) -> dict:
    import torch
    from gpu_kernels import cublas

    t = cublas(shape["M"], shape["N"], shape["K"], precision, run.device)
    torch.cuda.empty_cache()  # the candidate process needs the memory the operands held
    return {"what": "torch._scaled_mm" if precision == "fp8" else "torch.matmul", "time_s": t}


def cpu_matmul_baseline(shape: dict[str, int]) -> dict:
    import statistics

    import torch

    x, w = torch.randn(shape["M"], shape["K"]), torch.randn(shape["N"], shape["K"])
    times = []
    for _ in range(5):
        start = time.perf_counter()
        x @ w.t()
        times.append(time.perf_counter() - start)
    return {"what": "torch.matmul on the CPU (dry run)", "time_s": statistics.median(times)}


def compile_variant_priors(run: Run) -> None:
    """Dry run: the configs the matmul step measures first on Llama shapes, compiled for sm_90 by the JIT's own
    warmup (the precompile path), so a GPU session meets no config that fails to compile."""
    code = (
        "import json, torch\n"
        "from cotune.kernels.triton_jit.aot import compile_only\n"
        "from cotune.kernels.triton_jit.matmul import warmup\n"
        "out = []\n"
        "with compile_only(90):\n"
        "    for m, n, k, dtype, cfg in CASES:\n"
        "        t = {'bf16': torch.bfloat16, 'fp8': torch.float8_e4m3fn}[dtype]\n"
        "        c = warmup(m, n, k, t, torch.bfloat16, cfg, tf32=False, scaled=dtype == 'fp8', num_sms=132)\n"
        "        out.append({'tma': c.asm['ptx'].count('cp.async.bulk.tensor'), 'shared': c.metadata.shared})\n"
        "print(json.dumps(out))\n"
    )
    from cotune.tuner.measure.registry import get_kernel
    from cotune.tuner.types import Problem

    kernel, h100 = get_kernel("triton_matmul"), recorded_profile("NVIDIA H100 80GB HBM3")
    cases = []
    for m, precision in ((16, "bf16"), (4096, "fp8")):
        problem = Problem.make("triton_matmul", {"M": m, "N": 8192, "K": 8192}, precision)
        cases += [(m, 8192, 8192, precision, c.values) for c in variant_priors(kernel, problem, h100)]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", f"CASES = {cases!r}\n{code}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode:
        run.add("matmul", "compile_sm90", "error", error=proc.stderr.strip().splitlines()[-1:])
        return
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    run.add(
        "matmul",
        "compile_sm90",
        configs=[{"shape": c[:4], "config": c[4], **r} for c, r in zip(cases, results, strict=True)],
    )


def step_attention(run: Run) -> None:
    if run.dry:  # no Triton attention without a GPU: time the baseline on the CPU, on a tiny shape
        if run.has("attention", "sdpa_cpu"):
            return
        run.add(
            "attention",
            "sdpa_cpu",
            baseline=sdpa_baseline(
                {"batch": 1, "heads": 2, "seq_q": 64, "seq_k": 64, "head_dim": 32, "causal": 1}, run
            ),
        )
        return
    tune_rows(run, "attention", "triton_attention", list(ATTENTION_SHAPES), "bf16", lambda s: sdpa_baseline(s, run))


def sdpa_baseline(shape: dict[str, int], run: Run) -> dict:
    import statistics

    import torch
    from cotune.kernels.gpu_timing import time_gpu
    from cotune.tuner.measure.kernel import BenchSettings

    dev, dtype = ("cpu", torch.float32) if run.dry else ("cuda", torch.bfloat16)
    q, k, v = (
        torch.randn(shape["batch"], shape["heads"], n, shape["head_dim"], device=dev, dtype=dtype)
        for n in (shape["seq_q"], shape["seq_k"], shape["seq_k"])
    )

    def call() -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=bool(shape["causal"]))

    if run.dry:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    else:
        times = time_gpu(call, run.device, BenchSettings(warmup=3, repeats=20, target_s=0.1, max_repeats=2000))
    return {"what": "torch.nn.functional.scaled_dot_product_attention", "time_s": statistics.median(times)}


def step_moe(run: Run) -> None:
    from cotune.tuner.measure.registry import kernel_names

    if MOE_KERNEL not in kernel_names():
        if run.has("moe", MOE_KERNEL):
            return
        run.add(
            "moe",
            MOE_KERNEL,
            "skipped",
            reason=f"kernel {MOE_KERNEL} is not registered at this commit",
            shapes=[{"precision": p, **d} for p, d in MOE_SHAPES],
            batches=list(MOE_M),
        )
        return
    for precision, dims in MOE_DRY_SHAPES if run.dry else MOE_SHAPES:
        shapes = [{"M": m, **dims} for m in (MOE_M[:1] if run.dry else MOE_M)]
        # vLLM's shipped entry and default config are the kernel's baselines: each study re-measures them
        tune_rows(run, "moe", MOE_KERNEL, shapes, precision, lambda s: {"what": "the server's configs, below"})
    write_moe_outputs(run)


def write_moe_outputs(run: Run) -> None:
    """The fused-MoE results as a serving team uses them: the vLLM files of the tuned models (as `cotune export
    --format vllm` writes them) and the tuned / shipped / default table per M, beside the JSONL."""
    from cotune.tuner.errors import CotuneError
    from cotune.tuner.export.build import build_export
    from cotune.tuner.export.formats import write_files
    from cotune.tuner.export.vllm import VllmExporter

    try:
        data = build_export(run.storage, f"evidence-{MOE_KERNEL}")
        write_files(run.out_dir / "moe_vllm", VllmExporter().render(data), data["job"], force=True)
    except CotuneError as exc:
        run.add("moe", "export", "error", error=str(exc))
        return
    lines = ["| model shape | dtype | M | tuned | vLLM shipped | vLLM default |", "|---|---|---|---|---|---|"]
    for row in run.rows("moe"):
        if "time_s" not in row:
            continue
        b = row.get("server_baselines", {})
        cells = [fmt_ms(row["time_s"]), *(fmt_ms(b.get(n, {}).get("time_s")) for n in ("vllm_shipped", "vllm_default"))]
        dims = ",".join(f"{k}={v}" for k, v in row["shape"].items() if k != "M")
        lines.append(f"| {dims} | {row['precision']} | {row['shape']['M']} | " + " | ".join(cells) + " |")
    (run.out_dir / "moe_table.md").write_text("\n".join(lines) + "\n")


def fmt_ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.4g} ms"


def step_remeasure(run: Run) -> None:
    """Each winner in one fresh candidate process, twice, with up to two configs of the same program (GROUP_M
    beyond the grid's rows): how far a reused winner and its twins read from the tuned figure."""
    from cotune.tuner.measure.isolation import CandidateRunner, Request
    from cotune.tuner.measure.kernel import BenchSettings
    from cotune.tuner.measure.registry import get_kernel
    from cotune.tuner.types import Config, Measurement, Problem

    bench = BenchSettings(warmup=3, repeats=20, target_s=0.1, max_repeats=2000, timeout_s=120)
    winners = [r for step in ("matmul", "attention", "moe") for r in run.rows(step) if "winner" in r]
    with CandidateRunner() as runner:
        for row in winners:
            if run.has("remeasure", row["key"]) or run.out_of_time():
                continue
            kernel = get_kernel(row["kernel"])
            problem = Problem.make(row["kernel"], row["shape"], row["precision"])
            winner = Config.make(row["winner"])
            twins = [
                c
                for c in (Config.make({**winner.values, "GROUP_M": g}) for g in (1, 4, 8, 16))
                if "GROUP_M" in winner.values
                and c != winner
                and kernel.program_key(problem, c) == kernel.program_key(problem, winner)
            ][:2]
            times: dict[str, list[float]] = {}
            for label, config in [("winner", winner), ("winner", winner), *(("twin", c) for c in twins)]:
                out = runner.run(Request(problem, config, run.device, bench))
                if isinstance(out, Measurement):
                    times.setdefault(label, []).append(out.median_s)
            fresh = times.get("winner", [])
            run.add(
                "remeasure",
                row["key"],
                tuned_time_s=row["time_s"],
                fresh_times_s=fresh,
                twin_times_s=times.get("twin", []),
                twins=[c.values for c in twins],
                fresh_vs_tuned=(min(fresh) / row["time_s"] - 1) if fresh else None,
                twin_spread=(max(fresh + times.get("twin", [])) / min(fresh + times.get("twin", [])) - 1)
                if fresh
                else None,
            )


def step_trial_time(run: Run) -> None:
    from gpu_trial_time import trial_time

    if any(step == "trial_time" for step, _ in run.done):
        return
    if run.dry:
        out = trial_time("c_matmul", {"M": 32, "N": 32, "K": 32}, "fp32", 4, 0, run.device, profile=False)
    else:
        shape = {"M": 4096, "N": 8192, "K": 8192}
        out = trial_time("triton_matmul", shape, "bf16", 16, run.workers, run.device, profile=False)
    run.add("trial_time", f"{out['kernel']}:{out['precision']}", **out)


def step_stopwatch(run: Run) -> None:
    """Per config: a screening-length timing (BenchSettings.screen_target_s of calls) against two full ones, in
    one candidate process: the short timing's bias and noise, which bench/screening.py could only model."""
    import random

    from cotune.tuner.measure.isolation import CandidateRunner, Request
    from cotune.tuner.measure.kernel import BenchSettings
    from cotune.tuner.measure.registry import get_kernel
    from cotune.tuner.types import Measurement, Problem

    full = BenchSettings(warmup=3, repeats=5, target_s=0.1, max_repeats=1000, timeout_s=120)
    short = BenchSettings(warmup=3, repeats=5, target_s=full.screen_target_s, max_repeats=1000, timeout_s=120)
    if run.dry:
        cases = [("c_matmul", {"M": 32, "N": 32, "K": 32}, "fp32", 2)]
    else:
        cases = [("triton_matmul", {"M": m, "N": 8192, "K": 8192}, "bf16", 6) for m in (16, 128)]
    with CandidateRunner() as runner:
        for name, shape, precision, count in cases:
            kernel, problem = get_kernel(name), Problem.make(name, shape, precision)
            key = f"{name}:{precision}:" + ",".join(f"{k}={v}" for k, v in shape.items())
            if run.has("stopwatch", key) or run.out_of_time():
                continue
            configs = random.Random(0).sample(kernel.space().feasible_points(problem, run.device), count)
            rows = []
            for config in configs:
                medians = {}
                for label, bench in (("full", full), ("short", short), ("full_again", full)):
                    out = runner.run(Request(problem, config, run.device, bench))
                    medians[label] = out.median_s if isinstance(out, Measurement) else None
                    medians[f"{label}_calls"] = len(out.times_s) if isinstance(out, Measurement) else 0
                rows.append({"config": config.values, **medians})
            ok = [r for r in rows if r["full"] and r["short"] and r["full_again"]]
            run.add(
                "stopwatch",
                key,
                configs=rows,
                short_vs_full=[r["short"] / r["full"] - 1 for r in ok],
                full_vs_full=[r["full_again"] / r["full"] - 1 for r in ok],
            )


def step_worker(run: Run) -> None:
    from gpu_evidence_service import worker_job

    if run.has("worker", "job"):
        return
    result = worker_job(run.out_dir, gpu=not run.dry)
    run.add("worker", "job", "ok" if result["state"] == "succeeded" else "error", **result)


STEP_FUNCTIONS: dict[str, Callable[[Run], None]] = {
    "env": step_env,
    "pytest": step_pytest,
    "matmul": step_matmul,
    "attention": step_attention,
    "moe": step_moe,
    "remeasure": step_remeasure,
    "trial_time": step_trial_time,
    "stopwatch": step_stopwatch,
    "worker": step_worker,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--out-dir", type=Path, help="default: bench/results/gpu_<device> (a temporary folder with --dry-run)"
    )
    ap.add_argument("--only", nargs="+", choices=STEPS, help="run these steps again from scratch, and no others")
    ap.add_argument("--trials", type=int, default=10, help="tuning budget per shape (default 10)")
    ap.add_argument("--deadline-s", type=float, default=420.0, help="start no new shape after this many seconds")
    ap.add_argument("--dry-run", action="store_true", help="check every step on a CPU with tiny shapes")
    ap.add_argument("--commit", help="the commit the rows name (default: git's; the GPU machine has no .git)")
    args = ap.parse_args(argv)
    try:
        device = detect("cpu") if args.dry_run else detect("cuda")
    except CotuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.out_dir is None:
        args.out_dir = (
            Path(tempfile.mkdtemp(prefix="gpu-evidence-"))
            if args.dry_run
            else REPO / "bench" / "results" / f"gpu_{slugify(device.name)}"
        )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    run = Run(
        args.out_dir,
        device,
        args.dry_run,
        3 if args.dry_run else args.trials,
        time.monotonic() + args.deadline_s,
        args.commit or git_commit(),
    )
    steps = args.only or STEPS
    # a unit written ok earlier is done, unless --only names its step (then it runs again)
    run.done = {(r["step"], r["key"]) for s in STEPS if s not in (args.only or ()) for r in run.rows(s)}
    start = time.monotonic()
    for name in steps:
        step_start = time.monotonic()
        if run.out_of_time() and name != "env":
            run.add(name, "step", "skipped", reason=OUT_OF_TIME)
            continue
        try:
            STEP_FUNCTIONS[name](run)
        except Exception as exc:  # noqa: BLE001 - one broken step must not cost the steps after it
            run.add(name, "step", "error", error=f"{type(exc).__name__}: {exc}")
        print(f"== {name}: {time.monotonic() - step_start:.1f} s", flush=True)
    print(f"wrote {run.path} in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
