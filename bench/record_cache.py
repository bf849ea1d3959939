"""Brute-force recording: every feasible config of a kernel's space measured on this machine's device, for
one or more problems, written as Kernel Tuner cache files (``.json.gz``) that ``cotune replay`` and
bench/search_efficiency.py read. Held-out data for the search benchmark, and same-GPU data across shapes
for transfer, where the shared recordings have neither.

    python bench/record_cache.py --kernel triton_matmul --precision bf16 \
        --problem M=16,N=8192,K=8192 --problem M=16,N=28672,K=8192 --out-dir bench/results/replay_h100 \
        [--values GROUP_M=1,8] [--compile-workers 14] [--time-limit-s 500]

Configs are compiled in a process pool and measured one at a time in the project's isolated candidate
process (a crash, hang or wrong result is that config's failure, not the recording's). A config feasible
for several problems is compiled once: kernels whose shape is a runtime argument share the binary, and a
compiler that keys on the shape simply compiles again when measuring. Each measurement is appended to
``<stem>.jsonl`` as it is made, so a run cut off by ``--time-limit-s`` (or killed) loses nothing and the
next run resumes; the ``.json.gz`` cache of a problem is written only once all its configs are measured,
because a config missing from a Kernel Tuner cache means "outside the space".

A kernel's baselines (``Kernel.baselines``: for fused_moe, vLLM's default config and the entry of the file
vLLM ships for the shape) are measured too, after the grid, and written under ``baselines`` in the cache
(name -> config and time), so that offline replay can compare a tuned table with them. They may lie
outside the space, which is why they are kept out of ``cache``. Kernels without baselines record as before.

    python bench/record_cache.py --kernel fused_moe --precision bf16 --problem M=16,E=8,H=4096,I=7168,topk=2 \
        --bench cuda_graph=true --out-dir bench/results/replay_h100
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import multiprocessing
import platform
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from cotune.tuner.device.profiles import device_for  # noqa: E402
from cotune.tuner.measure.isolation import CandidateRunner, Request  # noqa: E402
from cotune.tuner.measure.kernel import BenchSettings  # noqa: E402
from cotune.tuner.measure.precompile import precompile_one  # noqa: E402
from cotune.tuner.measure.registry import get_kernel  # noqa: E402
from cotune.tuner.spec.job import BenchSpec  # noqa: E402
from cotune.tuner.types import Config, DeviceProfile, Failure, FailureKind, Problem  # noqa: E402
from pydantic import ValidationError  # noqa: E402

# Short but stable timing: a recording measures thousands of configs, and the median of >= 10 L2-flushed
# calls separates configs well beyond the 1-2 % that decides a search benchmark's near-ties.
DEFAULT_BENCH = "warmup=2,repeats=10,target_ms=20,max_repeats=200,timeout_s=30"


def parse_problem(text: str) -> dict[str, int]:
    try:
        return {k.strip(): int(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise SystemExit(f"--problem {text!r}: expected NAME=INT,NAME=INT,...") from None


def parse_bench(text: str) -> BenchSettings:
    """``--bench`` as job spec ``bench`` fields; those it leaves out take DEFAULT_BENCH's values."""
    # each value read as a YAML scalar, as in a spec file: the spec's numbers are strict ("2" is no int)
    fields = {k: yaml.safe_load(v) for k, v in (part.split("=") for part in f"{DEFAULT_BENCH},{text}".split(","))}
    try:
        return BenchSpec(**fields).settings()
    except ValidationError as exc:
        raise SystemExit(f"--bench {text!r}: {exc}") from None


def stem(problem: Problem, device: DeviceProfile) -> str:
    dims = "_".join(f"{k}{v}" for k, v in sorted(problem.dims.items()))
    return f"{problem.kernel}_{problem.dtype.value}_{dims}_{device.slug}"


def compile_one(problem: Problem, config: Config, device: DeviceProfile) -> tuple[str | None, float]:
    """(compile error or None, seconds); runs in a pool process."""
    start = time.perf_counter()
    failure = precompile_one(problem, config, device)
    return (None if failure is None else failure[1]), time.perf_counter() - start


def kernel_tuner_marker(kind: FailureKind) -> str:
    return "CompilationFailedConfig" if kind is FailureKind.COMPILE else "RuntimeFailedConfig"


class Recording:
    """One problem's JSONL log (resumable) and the Kernel Tuner cache made from it."""

    def __init__(
        self,
        problem: Problem,
        configs: list[Config],
        device: DeviceProfile,
        out_dir: Path,
        baselines: dict[str, Config] | None = None,
    ) -> None:
        self.problem, self.configs, self.device = problem, configs, device
        self.baselines = baselines or {}
        self.log = out_dir / f"{stem(problem, device)}.jsonl"
        self.cache_path = out_dir / f"{stem(problem, device)}.json.gz"
        self.done: dict[str, dict] = {}
        self.done_baselines: dict[str, dict] = {}
        if self.log.exists():
            for line in self.log.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    if "baseline" in row:
                        self.done_baselines[row["baseline"]] = row
                    else:
                        self.done[row["key"]] = row

    def add(self, config: Config, time_ms: float | str, compile_ms: float, bench_ms: float, **extra: object) -> None:
        row = {"key": config.key, "config": config.values, "time": time_ms, "compile_time": compile_ms,
               "benchmark_time": bench_ms, **extra}  # fmt: skip
        self.done[config.key] = row
        with self.log.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def add_baseline(self, name: str, config: Config, time_ms: float | str, bench_ms: float, **extra: object) -> None:
        row = {"baseline": name, "key": config.key, "config": config.values, "time": time_ms,
               "benchmark_time": bench_ms, **extra}  # fmt: skip
        self.done_baselines[name] = row
        with self.log.open("a") as f:
            f.write(json.dumps(row) + "\n")

    @property
    def complete(self) -> bool:
        return all(c.key in self.done for c in self.configs) and all(n in self.done_baselines for n in self.baselines)

    def write_cache(self, keys: list[str], values: dict[str, list], meta: dict) -> None:
        cache = {}
        for config in self.configs:
            row = self.done[config.key]
            v = config.values
            entry = {k: v[k] for k in keys}
            entry.update({k: row[k] for k in ("time", "compile_time", "benchmark_time")})
            # the fields Kernel Tuner's simulation mode reads besides these; cotune measures no separately
            entry.update(verification_time=0, strategy_time=0, framework_time=0, timestamp=meta["date"])
            for k in ("repeats", "spread", "failure", "max_rel_error"):
                if k in row:
                    entry[k] = row[k]
            cache[",".join(str(v[k]) for k in keys)] = entry
        data = {
            **meta,
            "problem": self.problem.dims,
            "problem_size": list(self.problem.dims.values()),  # Kernel Tuner's tune_cache needs the key
            "precision": self.problem.dtype.value,
            "objective": "time",
            "tune_params_keys": keys,
            "tune_params": values,
            "cache": cache,
        }
        if self.baselines:
            rows = {name: self.done_baselines[name] for name in self.baselines}
            data["baselines"] = {
                name: {k: row[k] for k in ("config", "time", "failure") if k in row} for name, row in rows.items()
            }
        with gzip.open(self.cache_path, "wt") as f:
            json.dump(data, f)


def measure_baselines(rec: Recording, runner: CandidateRunner, bench, time_limit_s: float | None, t0: float) -> bool:  # noqa: ANN001
    """Measure the recording's baselines not yet in its log; True when the time limit stopped it."""
    for name, config in rec.baselines.items():
        if name in rec.done_baselines:
            continue
        if time_limit_s is not None and time.monotonic() - t0 > time_limit_s:
            return True
        start = time.perf_counter()
        out = runner.run(Request(rec.problem, config, rec.device, bench))
        bench_ms = (time.perf_counter() - start) * 1e3
        if isinstance(out, Failure):
            rec.add_baseline(name, config, kernel_tuner_marker(out.kind), bench_ms, failure=str(out))
        else:
            rec.add_baseline(name, config, out.median_s * 1e3, bench_ms, repeats=len(out.times_s),
                             spread=round(out.spread, 4), max_rel_error=out.max_rel_error)  # fmt: skip
        print(f"  {stem(rec.problem, rec.device)}: baseline {name} {rec.done_baselines[name]['time']}", flush=True)
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--precision", required=True)
    ap.add_argument("--problem", action="append", required=True, help="NAME=INT,... (repeat for more problems)")
    ap.add_argument("--values", action="append", default=[], help="PARAM=v1,v2: record a sub-grid of the space")
    ap.add_argument("--bench", default=DEFAULT_BENCH)
    ap.add_argument("--compile-workers", type=int, default=max(1, multiprocessing.cpu_count() - 2))
    ap.add_argument("--time-limit-s", type=float, default=None, help="stop (resumably) after this long")
    ap.add_argument("--out-dir", type=Path, required=True)
    args = ap.parse_args()
    t0 = time.monotonic()

    kernel = get_kernel(args.kernel)
    space = kernel.space()
    device = device_for(kernel.name, kernel.device_kinds)
    bench = parse_bench(args.bench)
    keys = space.names
    values = {p.name: list(p.values) for p in space.params}
    for item in args.values:
        name, _, text = item.partition("=")
        if name not in values:
            raise SystemExit(f"--values {item!r}: {args.kernel} has no param {name!r}; it has {', '.join(keys)}")
        wanted = text.split(",")
        unknown = [w for w in wanted if w not in {str(v) for v in values[name]}]
        if unknown:
            raise SystemExit(f"--values {item!r}: {', '.join(unknown)} not a value of {name} ({values[name]})")
        values[name] = [v for v in values[name] if str(v) in wanted]
    args.out_dir.mkdir(parents=True, exist_ok=True)

    recordings = []
    for text in args.problem:
        problem = Problem.make(kernel.name, parse_problem(text), args.precision)
        feasible = [c for c in space.feasible_points(problem, device) if all(c.values[k] in values[k] for k in keys)]
        recordings.append(Recording(problem, feasible, device, args.out_dir, kernel.baselines(problem, device)))
        print(f"{stem(problem, device)}: {len(feasible)} feasible configs, {len(recordings[-1].done)} already measured")

    # Each config is compiled once, for the first problem that needs it, in the background; measuring goes
    # problem by problem so that a run cut off by the time limit leaves whole recordings behind it.
    pool = ProcessPoolExecutor(args.compile_workers, mp_context=multiprocessing.get_context("spawn"))
    futures: dict[str, Future] = {}
    for rec in recordings:
        for c in rec.configs:
            if c.key not in rec.done and c.key not in futures:
                futures[c.key] = pool.submit(compile_one, rec.problem, c, device)
    print(f"{len(futures)} configs to compile", flush=True)
    compiled: dict[str, tuple[str | None, float]] = {}
    stopped = False
    with CandidateRunner() as runner:
        for rec in recordings:
            todo = [c for c in rec.configs if c.key not in rec.done]
            for i, config in enumerate(todo, 1):
                if args.time_limit_s is not None and time.monotonic() - t0 > args.time_limit_s:
                    stopped = True
                    break
                if config.key not in compiled:
                    compiled[config.key] = futures.pop(config.key).result()
                error, compile_s = compiled[config.key]
                if error is not None:
                    rec.add(config, "CompilationFailedConfig", compile_s * 1e3, 0.0, failure=error)
                    continue
                start = time.perf_counter()
                out = runner.run(Request(rec.problem, config, device, bench))
                bench_ms = (time.perf_counter() - start) * 1e3
                if isinstance(out, Failure):
                    rec.add(config, kernel_tuner_marker(out.kind), compile_s * 1e3, bench_ms, failure=str(out))
                else:
                    rec.add(config, out.median_s * 1e3, compile_s * 1e3, bench_ms, repeats=len(out.times_s),
                            spread=round(out.spread, 4), max_rel_error=out.max_rel_error)  # fmt: skip
                if i % 200 == 0 or i == len(todo):
                    print(f"  {stem(rec.problem, device)}: {i}/{len(todo)} after {time.monotonic() - t0:.0f} s",
                          flush=True)  # fmt: skip
            if stopped:
                break
            stopped = measure_baselines(rec, runner, bench, args.time_limit_s, t0)
            if stopped:
                break
    pool.shutdown(wait=False, cancel_futures=True)

    meta = {
        "device_name": device.name,
        "kernel_name": kernel.name,
        "recorded_by": "cotune bench/record_cache.py",
        "command": " ".join(sys.argv),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "bench": args.bench,
    }
    for rec in recordings:
        ok = [r["time"] for r in rec.done.values() if not isinstance(r["time"], str)]
        status = f"{len(rec.done)}/{len(rec.configs)} measured, {len(rec.done) - len(ok)} failed"
        if rec.baselines:
            status += f", baselines {len(rec.done_baselines)}/{len(rec.baselines)}"
        if rec.complete:
            rec.write_cache(keys, values, meta)
            status += f", optimum {min(ok):.4f} ms -> {rec.cache_path}"
        print(f"{stem(rec.problem, device)}: {status}")
    print(f"{'stopped at the time limit (run again to resume)' if stopped else 'done'} after "
          f"{time.monotonic() - t0:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
