"""GPU evidence for the kernel library: tuned Triton matmul vs cuBLAS vs the Triton tutorial's configs on
Llama-3-70B shapes, attention and fused MoE vs their torch references, and the winner re-measured in a
fresh process. Needs an NVIDIA GPU; writes one JSON with the device, the date and this command.

    python bench/gpu_kernels.py [--trials 60] [--quick] [--batches 16 4096] [--precisions bf16]
                                [--compare-seeds] [--out bench/results/gpu_kernels_<gpu>.json]

Every tuned number comes from a real ``tune_job`` (cotune sampler, SQLite storage, no MLflow); cuBLAS is
``torch.matmul`` (bf16) or ``torch._scaled_mm`` (fp8, per-tensor scales) timed by the same stopwatch
(CUDA events, L2 flushed before each call). % of peak uses the dense datasheet peak of tuner/device/gpu_specs.py.
The tutorial baseline is the best of the space file's seeds (Triton's tutorial autotune list), each run as
Triton's autotune would run it, whether or not the search space admits it for the shape. With
``--compare-seeds`` each matmul is also tuned with the seeds left out of the space, the same budget.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cotune.kernels.gpu_timing import time_gpu  # noqa: E402
from cotune.kernels.triton_matmul import TUTORIAL, variant  # noqa: E402
from cotune.tuner.device.profiles import detect, slugify  # noqa: E402
from cotune.tuner.driver import tune_job  # noqa: E402
from cotune.tuner.errors import CotuneError  # noqa: E402
from cotune.tuner.measure.isolation import CandidateRunner, Request  # noqa: E402
from cotune.tuner.measure.kernel import BenchSettings  # noqa: E402
from cotune.tuner.measure.registry import get_kernel  # noqa: E402
from cotune.tuner.spec.job import parse_spec  # noqa: E402
from cotune.tuner.track.tracker import NullTracker  # noqa: E402
from cotune.tuner.types import Config, DeviceProfile, Failure, Measurement, Problem  # noqa: E402

LLAMA70B_NK = ((8192, 8192), (28672, 8192), (8192, 28672))  # (N, K): attention out, MLP up/gate, MLP down
BATCHES = (16, 128, 1024, 4096)
BENCH = BenchSettings(warmup=3, repeats=20, timeout_s=120, target_s=0.2, max_repeats=2000)


COMPILE_WORKERS = 8  # the lent H100/H200 machines have 16 cores


def spec_yaml(kernel: str, shape: dict[str, int], precision: str, trials: int, space: Path | None = None) -> str:
    dims = ", ".join(f"{k}: {v}" for k, v in shape.items())
    return (
        f"name: bench-{kernel}{'-noseeds' if space else ''}\nkernel: {kernel}\nproblems: [{{{dims}}}]\n"
        f"precisions: [{precision}]\nbudget: {{trials: {trials}}}\nsampler: {{name: cotune, seed: 0}}\ntop_k: 3\n"
        "bench: {warmup: 3, repeats: 20, remeasure_repeats: 50, target_ms: 200, timeout_s: 120, "
        f"compile_workers: {COMPILE_WORKERS}}}\n" + (f"search_space: {space}\n" if space else "")
    )


def space_without_seeds(kernel: str, directory: Path) -> Path:
    """The kernel's space file with its seeds left out: the search alone, for --compare-seeds."""
    data = yaml.safe_load((REPO / "search_spaces" / f"{kernel}.yaml").read_text())
    data.pop("seeds", None)
    path = directory / f"{kernel}-noseeds.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def tune(
    kernel: str,
    shape: dict[str, int],
    precision: str,
    trials: int,
    device: DeviceProfile,
    db: str,
    space: Path | None = None,
) -> dict:
    spec = parse_spec(spec_yaml(kernel, shape, precision, trials, space))
    [outcome] = tune_job(spec, db, device, NullTracker())
    if outcome.best is None:
        return {"error": f"no config measured ({outcome.failed} failed, {outcome.pruned} pruned)"}
    b = outcome.best
    return {
        "config": b.config.values,
        "tuned_time_s": b.tuned.median_s,
        "time_s": b.remeasured.median_s,
        "spread": b.remeasured.spread,
        "measured": outcome.measured,
        "failed": outcome.failed,
        "max_rel_error": b.remeasured.max_rel_error,
    }


def fresh_process(problem: Problem, config: dict, device: DeviceProfile) -> dict:
    """The winner timed again in a new candidate process: the number a user gets when they reuse it."""
    with CandidateRunner() as runner:
        out = runner.run(Request(problem, Config.make(config), device, BENCH))
    if isinstance(out, Failure):
        return {"error": str(out)}
    return {"time_s": out.median_s, "spread": out.spread, "repeats": len(out.times_s)}


def tutorial_best(problem: Problem, device: DeviceProfile) -> dict:
    """Triton's autotune over the tutorial list: every config timed, including those the search space leaves
    out for this shape (a BLOCK_M above a decode batch runs, masked); one that fails to compile or run is
    skipped, as autotune skips it."""
    best: tuple[float, dict] | None = None
    failed = 0
    with CandidateRunner() as runner:
        for config in dict.fromkeys(c for _, c in get_kernel("triton_matmul").space().seeds if variant(c) == TUTORIAL):
            out = runner.run(Request(problem, config, device, BENCH))
            if isinstance(out, Measurement) and (best is None or out.median_s < best[0]):
                best = (out.median_s, config.values)
            failed += not isinstance(out, Measurement)
    if best is None:
        return {"error": f"no tutorial config ran ({failed} failed)"}
    return {"time_s": best[0], "config": best[1], "failed": failed}


def cublas(m: int, n: int, k: int, precision: str, device: DeviceProfile) -> float:
    import torch
    from cotune.kernels.gpu import quantize_fp8

    x = torch.randn(m, k, device="cuda")
    w = torch.randn(n, k, device="cuda")
    if precision == "fp8":
        (qx, sx), (qw, sw) = quantize_fp8(x), quantize_fp8(w)

        def call():  # noqa: ANN202
            return torch._scaled_mm(qx, qw.t(), scale_a=sx, scale_b=sw, out_dtype=torch.bfloat16)
    else:
        xb, wb = x.bfloat16(), w.bfloat16()

        def call():  # noqa: ANN202
            return torch.matmul(xb, wb.t())

    times = sorted(time_gpu(call, device, BENCH))
    return times[len(times) // 2]


def matmul_rows(
    device: DeviceProfile,
    trials: int,
    db: str,
    batches: tuple[int, ...],
    precisions: tuple[str, ...],
    no_seeds: Path | None,
    nks: tuple[tuple[int, int], ...],
    add: Callable[[dict], None],
) -> None:
    for precision in precisions:
        if precision == "fp8" and not device.supports_fp8:
            continue
        peak = device.peak_flops.get(precision, 0.0)
        for n, k in nks:
            for m in batches:
                shape = {"M": m, "N": n, "K": k}
                problem = Problem.make("triton_matmul", shape, precision)
                flops = 2.0 * m * n * k
                row: dict = {"precision": precision, **shape}
                row["tuned"] = tune("triton_matmul", shape, precision, trials, device, db)
                if no_seeds is not None:
                    # its own storage, so neither arm warm-starts from the other's studies
                    db_no_seeds = db.removesuffix(".db") + "-noseeds.db"
                    row["tuned_without_seeds"] = tune(
                        "triton_matmul", shape, precision, trials, device, db_no_seeds, no_seeds
                    )
                row["tutorial"] = tutorial_best(problem, device)
                row["cublas"] = {"time_s": cublas(m, n, k, precision, device)}
                if "config" in row["tuned"]:
                    row["tuned"]["fresh_process"] = fresh_process(problem, row["tuned"]["config"], device)
                for key in ("tuned", "tuned_without_seeds", "tutorial", "cublas"):
                    t = row.get(key, {}).get("time_s")
                    if t:
                        row[key]["tflops"] = flops / t / 1e12
                        row[key]["pct_peak"] = 100 * flops / t / peak if peak else None
                if row["tuned"].get("time_s") and row["cublas"].get("time_s"):
                    row["tuned_vs_cublas"] = row["cublas"]["time_s"] / row["tuned"]["time_s"]
                fresh = row["tuned"].get("fresh_process", {}).get("time_s")
                if fresh:
                    row["fresh_vs_tuned"] = fresh / row["tuned"]["time_s"] - 1
                add(row)


def reference_rows(device: DeviceProfile, trials: int, db: str, add: Callable[[dict], None]) -> None:
    """Attention and fused MoE, tuned, against the torch reference of each (timed by the same stopwatch)."""
    import torch

    attn = {"batch": 4, "heads": 64, "seq_q": 2048, "seq_k": 2048, "head_dim": 128, "causal": 1}
    q, k_, v = (torch.randn(4, 64, 2048, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    torch_t = sorted(
        time_gpu(lambda: torch.nn.functional.scaled_dot_product_attention(q, k_, v, is_causal=True), device, BENCH)
    )
    add(
        {
            "kernel": "triton_attention",
            **attn,
            "precision": "bf16",
            "tuned": tune("triton_attention", attn, "bf16", trials, device, db),
            "torch_sdpa": {"time_s": torch_t[len(torch_t) // 2]},
        }
    )
    for m in (16, 256, 2048):
        moe = {"M": m, "E": 8, "N": 28672, "K": 8192, "topk": 2}  # Mixtral-8x7B-like w1 at 70B width
        add(
            {
                "kernel": "triton_moe",
                **moe,
                "precision": "bf16",
                "tuned": tune("triton_moe", moe, "bf16", trials, device, db),
                "torch_reference": {"time_s": moe_torch_time(moe, device)},
            }
        )


def moe_torch_time(shape: dict[str, int], device: DeviceProfile) -> float:
    """The unfused baseline: gather the tokens of each expert and run one torch matmul per expert."""
    import torch

    m, e, n, k, topk = (shape[x] for x in ("M", "E", "N", "K", "topk"))
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(e, n, k, device="cuda", dtype=torch.bfloat16)
    ids = torch.topk(torch.randn(m, e, device="cuda"), topk, dim=1).indices
    out = torch.empty(m, topk, n, device="cuda", dtype=torch.bfloat16)

    def call() -> torch.Tensor:
        for x in range(e):
            rows, slots = (ids == x).nonzero(as_tuple=True)
            if rows.numel():
                out[rows, slots] = a[rows] @ w[x].t()
        return out

    times = sorted(time_gpu(call, device, BENCH))
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=60, help="tuning budget per problem")
    parser.add_argument("--quick", action="store_true", help="M in 16 and 4096 only, no attention/MoE")
    parser.add_argument(
        "--references",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tune attention and fused MoE too (default: unless --quick)",
    )
    parser.add_argument("--batches", type=int, nargs="+", help="matmul M values (default 16 128 1024 4096)")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    parser.add_argument("--nk", nargs="+", help="matmul NxK shapes, e.g. 8192x8192 (default: the three Llama ones)")
    parser.add_argument("--compare-seeds", action="store_true", help="also tune each matmul without the seeds")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    try:
        device = detect("cuda")
    except CotuneError as exc:
        sys.exit(f"error: {exc}")
    out = args.out or REPO / "bench" / "results" / f"gpu_kernels_{slugify(device.name)}.json"
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/bench.db"
        batches = tuple(args.batches) if args.batches else (16, 4096) if args.quick else BATCHES
        references = not args.quick if args.references is None else args.references
        nks = tuple(tuple(map(int, s.split("x"))) for s in args.nk) if args.nk else LLAMA70B_NK
        no_seeds = space_without_seeds("triton_matmul", Path(tmp)) if args.compare_seeds else None
        result: dict = {
            "device": device.to_json(),
            "date": dt.date.today().isoformat(),
            "command": "python " + " ".join(sys.argv),
            "host": platform.node(),
            "toolchain": get_kernel("triton_matmul").toolchain(),
            "matmul": [],
            "references": [],
        }

        def adder(key: str) -> Callable[[dict], None]:
            """Each row is printed and the file rewritten as it comes: a run stopped midway keeps its rows."""

            def add(row: dict) -> None:
                print(json.dumps(row), flush=True)
                result[key].append(row)
                out.write_text(json.dumps(result, indent=2) + "\n")

            return add

        matmul_rows(device, args.trials, db, batches, tuple(args.precisions), no_seeds, nks, adder("matmul"))
        if references:
            reference_rows(device, args.trials, db, adder("references"))
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
