"""Does the GPU stopwatch time the kernel or the host's launch? Re-measures configs of a brute-force
recording that run the same program ("twins": at M=16 ``GROUP_M`` changes nothing) with the stopwatch's
head start off (the host launches each call while the GPU waits, as Triton's ``do_bench``) and on, with
the CPU idle and with every core but two busy (as while a compile pool runs), in rounds of shuffled
order. Twins that disagree under one setting and agree under the other say which setting times the
kernel. Needs an NVIDIA GPU; writes one JSON with the device, the date and this command.

    python bench/experiments/launch_bound.py bench/results/replay_h100/triton_matmul_bf16_K8192_M16_N8192_*.json.gz \
        [--groups 12] [--rounds 3] [--out bench/experiments/results/launch_bound_<gpu>.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gzip
import json
import multiprocessing
import os
import platform
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cotune.kernels.gpu_timing as gpu_timing  # noqa: E402
from cotune.tuner.device.profiles import detect  # noqa: E402
from cotune.tuner.measure.kernel import BenchSettings  # noqa: E402
from cotune.tuner.measure.precompile import precompile_one  # noqa: E402
from cotune.tuner.measure.registry import get_kernel  # noqa: E402
from cotune.tuner.types import Config, Problem  # noqa: E402

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the bench/ folder: its maintained benchmarks
from record_cache import DEFAULT_BENCH, parse_bench  # noqa: E402 - bench/ is on sys.path when run as a script

BENCH = parse_bench(DEFAULT_BENCH)  # the recordings' timing settings


def twin_groups(data: dict) -> list[list[dict]]:
    """Configs of a matmul recording that run the same program mapping, groups of two or more."""
    keys, m, groups = data["tune_params_keys"], data["problem"]["M"], {}
    for v in data["cache"].values():
        if isinstance(v["time"], str):
            continue
        twin = min(-(-m // v["BLOCK_M"]), v["GROUP_M"])
        groups.setdefault((*(v[k] for k in keys if k != "GROUP_M"), twin), []).append(v)
    return [g for g in groups.values() if len(g) > 1]


def pick_groups(groups: list[list[dict]], n: int) -> list[list[dict]]:
    """The group of the recorded optimum, the most discordant groups, and fast groups that agreed."""
    by_best = sorted(groups, key=lambda g: min(v["time"] for v in g))
    by_spread = sorted(groups, key=lambda g: -max(v["time"] for v in g) / min(v["time"] for v in g))
    picked: list[list[dict]] = []
    for g in [by_best[0], *by_spread[: n // 2], *by_best[1:]]:
        if len(picked) < n and g not in picked:
            picked.append(g)
    return picked


def spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def summarize(name: str, rows: list[dict], groups: list[list[dict]], keys: list[str]) -> list[dict]:
    """Per CPU load and head-start setting: how far twins disagree (each config's median over rounds) and how
    far one config's rounds disagree."""
    rounds: dict[tuple, list[float]] = {}
    for r in rows:
        if r["file"] == name:
            rounds.setdefault((r["load"], r["head_start"], Config.make(r["config"]).key), []).append(r["median_ms"])
    group_keys = [[Config.make({k: v[k] for k in keys}).key for v in g] for g in groups]
    out = []
    for load in ("idle", "busy"):
        for mode in ("off", "on"):
            med = {key: statistics.median(rounds[load, mode, key]) for g in group_keys for key in g}
            twins = [max(med[k] for k in g) / min(med[k] for k in g) for g in group_keys]
            spread = [max(rounds[load, mode, k]) / min(rounds[load, mode, k]) for k in med]
            out.append({
                "file": name, "load": load, "head_start": mode, "configs": len(med), "twin_groups": len(groups),
                "twin_max_over_min_median": statistics.median(twins),
                "twin_groups_apart_over_2pct": sum(r > 1.02 for r in twins),
                "round_max_over_min_median": statistics.median(spread), "fastest_ms": min(med.values()),
                "fastest_recorded_ms": min(v["time"] for g in groups for v in g),
            })  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--groups", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy-cores", type=int, default=max(1, (os.cpu_count() or 4) - 2), help="also the compile pool")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    t0 = time.monotonic()
    device = detect("cuda")
    rows, summary = [], []
    for path in args.files:
        data = json.load(gzip.open(path, "rt"))
        kernel = get_kernel(data["kernel_name"])
        problem = Problem.make(kernel.name, data["problem"], data["precision"])
        keys = data["tune_params_keys"]
        groups = pick_groups(twin_groups(data), args.groups)
        configs = [Config.make({k: v[k] for k in keys}) for g in groups for v in g]
        with ProcessPoolExecutor(args.busy_cores, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(precompile_one, [problem] * len(configs), configs, [device] * len(configs)))
        for c in configs:  # load each binary and warm up outside any timed setting
            kernel.measure(problem, c, device, BenchSettings(warmup=1, repeats=1, target_s=0, max_repeats=1))
        for load in ("idle", "busy"):
            spinners = []
            if load == "busy":
                ctx = multiprocessing.get_context("spawn")
                spinners = [ctx.Process(target=spin, args=(time.time() + 600,)) for _ in range(args.busy_cores)]
                for p in spinners:
                    p.start()
                time.sleep(2)
            try:
                for rnd in range(args.rounds):
                    order = [(c, mode) for c in configs for mode in ("off", "on")]
                    random.Random(rnd).shuffle(order)
                    for c, mode in order:
                        gpu_timing.HEAD_START_MARGIN = 0.0 if mode == "off" else 2.0
                        m = kernel.measure(problem, c, device, BENCH)
                        rows.append({"file": path.name, "config": c.values, "load": load, "head_start": mode,
                                     "round": rnd, "median_ms": statistics.median(m.times_s) * 1e3,
                                     "calls": len(m.times_s)})  # fmt: skip
            finally:
                for p in spinners:
                    p.terminate()
        for s in summarize(path.name, rows, groups, keys):
            summary.append(s)
            print(f"{path.name[:40]} load={s['load']} head_start={s['head_start']}: twins max/min median "
                  f"{s['twin_max_over_min_median']:.3f}, {s['twin_groups_apart_over_2pct']}/{len(groups)} apart "
                  f"> 2 %, rounds max/min median {s['round_max_over_min_median']:.3f}, fastest "
                  f"{s['fastest_ms']:.4f} ms (recorded {s['fastest_recorded_ms']:.4f})", flush=True)  # fmt: skip
    out = {
        "command": " ".join(["python", *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device.name, "host": platform.node(), "busy_cores": args.busy_cores,
        "bench": dataclasses.asdict(BENCH),
        "seconds": round(time.monotonic() - t0, 1), "summary": summary, "rows": rows,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} after {out['seconds']} s")


if __name__ == "__main__":
    main()
