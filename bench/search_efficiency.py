"""Search efficiency on recorded brute-force data: files x strategies x seeds, a fixed budget each.

    python bench/search_efficiency.py [--data ../shared/bench/replay] [--strategies cotune tpe random]
        [--seeds 20] [--budget 200] [--out bench/results/search_efficiency.json]

Progress goes to stderr, one line per finished run; each finished run is also kept in OUT.runs.jsonl, so a
stopped benchmark, run again with the same arguments, resumes instead of starting over.

Reports per file and strategy: median evaluations to within 2 % of the optimum, the mean and median of
best/optimum after 25, 50, 100 and 200 evaluations, and the median best/optimum curve. Strategies are
cotune's sampler names, or one of them with:

- ``+transfer``: evaluate first the top 5 configs of the same kernel's caches from the other GPUs (as
  ``enqueue_trial`` priors);
- ``+related``: give the sampler those caches' times as a model feature;
- ``+related=N``: give it only the configs a ``cotune`` search of N evaluations measured on each sibling
  (what ``sampler.transfer: model`` does in a study);
- ``+winner=N``: evaluate first the best config such a search found on the first sibling
  (``transfer: winner``); ``+study=N``: both (``transfer: true``, the default);
- ``+patience=N``: stop after N evaluations without a 1 % gain;
- ``+programs``: measure each program once, as a study does (``Kernel.program_key``: at M=16 the four
  GROUP_M values of a Triton matmul config are one program); cotune's own recordings only;
- ``+nofail``: leave the recorded failures out of the space, as Kernel Tuner's ``tune_cache`` does (it infers
  its restrictions from the configs without an error, so its strategies never spend an evaluation on one);
  an oracle no real search has, to measure what that difference in protocol is worth;
- ``[n_startup=5]`` and the like: sampler settings;

or ``kt:<strategy>`` for Kernel Tuner's own (bench/kernel_tuner_peer.py).
"""

from __future__ import annotations

import os

# One BLAS thread per process: the pool already runs one process per core.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import datetime as dt
import json
import platform
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from cotune.tuner.errors import SpecError
from cotune.tuner.search.replay import ReplayData, ReplayResult, load_recording, replay

CHECKPOINTS = (25, 50, 100, 200)


def one(args: tuple[str, str, int, int]) -> dict:
    path, strategy, seed, budget = args
    data = load_recording(Path(path))
    if strategy.startswith("kt:"):
        from kernel_tuner_peer import kt_best_so_far  # bench/ is on sys.path when run as a script

        try:
            curve, evaluated = kt_best_so_far(Path(path), strategy.removeprefix("kt:"), seed, budget, data)
        except Exception as exc:  # one peer strategy failing on one file must not sink the whole benchmark
            print(f"{data.name} {strategy} seed {seed}: {type(exc).__name__}: {exc}", flush=True)
            curve, evaluated = [], []
        result = ReplayResult(data.optimum, curve, evaluated=evaluated)
    else:
        name, options = _parse_strategy(strategy)
        same_program = "+programs" in name  # measure each program once, as a study does (Kernel.program_key)
        name = name.replace("+programs", "")
        if "+nofail" in name:
            name = name.replace("+nofail", "")
            data = data.subset([p for p, r in data.records.items() if r.time_ms is not None])
        patience = None
        if "+patience=" in name:
            name, _, n = name.partition("+patience=")
            patience = int(n)
        priors = related = None
        for flag in ("+winner=", "+study="):  # what transfer: winner / transfer: true do in a study
            if flag in name:
                name, _, n = name.partition(flag)
                searched = _searched_siblings(Path(path), data, int(n), seed)
                priors = searched[0].top(1) if searched else []
                related = searched if flag == "+study=" else None
        if "+related" in name:
            name, _, measured = name.partition("+related")
            if measured:  # "+related=N": only what a cotune study of N evaluations measured on each sibling
                related = _searched_siblings(Path(path), data, int(measured.removeprefix("=")), seed)
            else:
                related = _siblings(Path(path), data)
        if name.endswith("+transfer"):
            name = name.removesuffix("+transfer")
            priors = [c for sib in _siblings(Path(path), data) for c in sib.top(TRANSFER_TOP)]
        result = replay(
            data,
            sampler=name,
            budget=budget,
            seed=seed,
            sampler_options=options,
            priors=priors,
            patience=patience,
            related=related,
            same_program=same_program,
        )
    curve = result.best_so_far
    # A checkpoint past the budget asked for is left out: the run never had that many evaluations to spend.
    # One the run did not reach because it stopped early (space exhausted, patience) holds its final best.
    checkpoints = [n for n in CHECKPOINTS if n <= budget]
    ratio = {}
    for n in checkpoints:
        best = curve[min(n, len(curve)) - 1] if curve else None
        ratio[str(n)] = best / result.optimum if best is not None else None
    return {
        "file": data.name,
        "strategy": strategy,
        "seed": seed,
        "budget": budget,
        "to_2pct": result.evaluations_to_within(0.02),
        "evaluations": len(curve),
        "ratio": ratio,
        "best": {str(n): _best_config(data, result.evaluated[:n]) for n in checkpoints},
        "curve": [None if b is None else round(b / result.optimum, 5) for b in curve],
    }


def _best_config(data: ReplayData, evaluated: list[tuple]) -> list | None:
    """The fastest config among the first evaluations: what a run would hand to serving at that point, and
    what ``bench/experiments/program_scores.py`` scores by its program's time."""
    timed = [p for p in evaluated if data.records[p].time_ms is not None]
    return list(min(timed, key=lambda p: data.records[p].time_ms)) if timed else None


TRANSFER_TOP = 5


def _siblings(path: Path, data: ReplayData) -> list:
    """Caches of the same kernel (same file prefix and params) recorded on other GPUs or shapes. Where the
    caches name their precision (cotune's recordings do), only those of the same precision: a study
    transfers from studies of its own kernel, precision, objective and device only."""
    kernel = path.name.split("_")[0]
    out = []
    for other in sorted(path.parent.glob(f"{kernel}_*.json*")):
        if other == path or "_T4" in other.name:
            continue
        sibling = load_recording(other)
        if sibling.keys == data.keys and sibling.precision == data.precision:
            out.append(sibling)
    return out


def _searched_siblings(path: Path, data: ReplayData, n: int, seed: int) -> list:
    """What a ``cotune`` study of n evaluations (this seed) measured on each sibling: a related study in real
    use is another search, not a brute force."""
    return [sib.subset(replay(sib, sampler="cotune", budget=n, seed=seed).evaluated) for sib in _siblings(path, data)]


def _parse_strategy(strategy: str) -> tuple[str, dict]:
    """``cotune[n_startup=5,xi=0]`` -> ("cotune", {"n_startup": 5, "xi": 0.0}): sampler settings to compare."""
    if "[" not in strategy:
        return strategy, {}
    name, rest = strategy.rstrip("]").split("[", 1)
    options = {}
    for item in filter(None, rest.split(",")):
        key, value = item.split("=")
        options[key] = _option_value(value)
    return name, options


def _option_value(text: str) -> bool | int | float | str:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for key in sorted({(r["file"], r["strategy"]) for r in rows}):
        group = [r for r in rows if (r["file"], r["strategy"]) == key]
        reach = [r["to_2pct"] if r["to_2pct"] is not None else float("inf") for r in group]
        median = statistics.median(reach)
        entry = {
            "file": key[0],
            "strategy": key[1],
            "seeds": len(group),
            # null: the median run did not get within 2 % inside the budget
            "median_evals_to_2pct": None if median == float("inf") else median,
        }
        for n in CHECKPOINTS:
            if any(str(n) not in r["ratio"] for r in group):  # past the budget
                entry[f"mean_best_over_opt@{n}"] = entry[f"median_best_over_opt@{n}"] = None
                continue
            vals = [r["ratio"][str(n)] if r["ratio"][str(n)] is not None else float("inf") for r in group]
            finite = [v for v in vals if v != float("inf")]
            entry[f"mean_best_over_opt@{n}"] = round(statistics.mean(finite), 4) if finite else None
            med = statistics.median(vals)
            entry[f"median_best_over_opt@{n}"] = None if med == float("inf") else round(med, 4)
        entry["mean_evaluations"] = round(statistics.mean(r["evaluations"] for r in group), 1)
        entry["median_curve"] = _median_curve([r["curve"] for r in group])
        out.append(entry)
    return out


def _median_curve(curves: list[list]) -> list[float | None]:
    """Median best/optimum after each evaluation, over seeds (a run that found nothing yet counts as worst)."""
    length = max(len(c) for c in curves)
    out = []
    for i in range(length):
        vals = [c[min(i, len(c) - 1)] if c else None for c in curves]
        vals = [float("inf") if v is None else v for v in vals]
        med = statistics.median(vals)
        out.append(None if med == float("inf") else round(med, 4))
    return out


def recordings(folder: Path) -> list[str]:
    """The recordings in a folder (Kernel Tuner caches, T4 results files, cotune trial tables). A T4 copy of
    a Kernel Tuner cache that is there too is left out (the shared data holds convolution_RTX_3090 as
    NAME.json.gz and NAME_T4.json.gz; Kernel Tuner's own T4 output is NAME-results.json); a T4 file with no
    such twin is a recording of its own. A file that is no recording (a T4 metadata file, another JSON) is
    left out with its reason on stderr, so one stray file does not fail a benchmark over a whole folder."""
    names = {p.name for pattern in ("*.json*", "*.csv") for p in folder.glob(pattern)}
    found = []
    for name in sorted(names):
        if any(mark in name and name.replace(mark, "") in names for mark in ("_T4", "-results")):
            continue
        try:
            load_recording(folder / name)
        except SpecError as exc:
            print(f"left out {name}: {exc}", file=sys.stderr)
            continue
        found.append(name)
    return found


SHARED_DATA = Path("../shared/bench/replay")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=SHARED_DATA)
    ap.add_argument("--strategies", nargs="+", default=["cotune", "tpe", "random"])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument(
        "--files",
        nargs="*",
        help="file names under --data: Kernel Tuner caches, T4 results, cotune trial tables (default: every "
        "recording there, but a T4 file whose Kernel Tuner cache is there too: NAME_T4.json.gz or "
        "NAME-results.json.gz beside NAME.json.gz)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        help="result file (default: bench/results/search_efficiency.json for the shared data, "
        "bench/results/search_efficiency_<folder>.json for another --data folder)",
    )
    ap.add_argument("--procs", type=int, default=None, help="worker processes (default: one per core)")
    args = ap.parse_args()
    out = args.out or default_out(args.data)
    names = args.files or recordings(args.data)
    jobs = [
        (str(args.data / f), s, seed, args.budget) for f in names for s in args.strategies for seed in range(args.seeds)
    ]
    journal = out.with_name(out.name + ".runs.jsonl")
    rows = run_jobs(jobs, args.procs, journal)
    summary = summarise(rows)
    for r in rows:
        del r["curve"]  # kept as median curves in the summary; 200 numbers per run would bloat the file
    for s in summary:
        print(json.dumps({k: v for k, v in s.items() if k != "median_curve"}))
    write_result(out, "bench/search_efficiency.py", summary=summary, runs=rows)
    journal.unlink()  # every run is in the result file now
    print(f"wrote {out}", file=sys.stderr)


def default_out(data: Path) -> Path:
    """Where a run's results go unless told: another folder's never overwrite the shared data's."""
    if data.resolve() == SHARED_DATA.resolve():
        return Path("bench/results/search_efficiency.json")
    return Path(f"bench/results/search_efficiency_{data.resolve().name}.json")


def run_jobs(jobs: list[tuple[str, str, int, int]], procs: int | None, journal: Path) -> list[dict]:
    """Every job's row, in the jobs' order. Each finished run is appended to ``journal`` as it completes, and
    a run already there (same file, strategy, seed and budget) is taken from it, not run again: a benchmark
    of hundreds of runs that is stopped, or whose machine goes away, resumes where it was."""
    text = journal.read_text() if journal.exists() else ""
    done: dict[tuple, dict] = {}
    for line in text.splitlines():
        try:
            row = json.loads(line)
            done[_row_key(row)] = row
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut off when the run was stopped: that run is done again
    todo = [job for job in jobs if _job_key(job) not in done]
    if len(todo) < len(jobs):
        print(f"resuming from {journal}: {len(jobs) - len(todo)} of {len(jobs)} runs already done", file=sys.stderr)
    start = time.monotonic()
    journal.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(procs) as pool, journal.open("a") as log:
        if text and not text.endswith("\n"):
            log.write("\n")  # its last line was cut off: the next run's row must not join it
        futures = {pool.submit(one, job): job for job in todo}
        failed = []
        for n, future in enumerate(as_completed(futures), 1):
            try:
                row = future.result()
            except Exception as exc:  # one run's error must not cost the others; it is named at the end
                failed.append(
                    f"{Path(futures[future][0]).name} {futures[future][1]} seed {futures[future][2]}: {exc!r}"
                )
                print(f"[{n}/{len(todo)}] failed: {failed[-1]}", file=sys.stderr, flush=True)
                continue
            done[_row_key(row)] = row
            log.write(json.dumps(row) + "\n")
            log.flush()
            elapsed = time.monotonic() - start
            left = elapsed / n * (len(todo) - n)
            last = row["curve"][-1] if row["curve"] else None
            print(
                f"[{n}/{len(todo)}] {row['file']} {row['strategy']} seed {row['seed']}: best/optimum "
                f"{'–' if last is None else f'{last:.3f}'} after {row['evaluations']} evaluations; "
                f"{elapsed:.0f} s, about {left:.0f} s left",
                file=sys.stderr,
                flush=True,
            )
    if failed:
        raise SystemExit(
            f"{len(failed)} of {len(jobs)} runs failed; the other runs are kept in {journal}, and a rerun with "
            "the same arguments does only the failed ones:\n" + "\n".join(failed)
        )
    return [done[_job_key(job)] for job in jobs]


def _job_key(job: tuple[str, str, int, int]) -> tuple:
    path, strategy, seed, budget = job
    return Path(path).name, strategy, seed, budget


def _row_key(row: dict) -> tuple:
    return row["file"], row["strategy"], row["seed"], row["budget"]


def write_result(path: Path, benchmark: str, **body: object) -> None:
    """A benchmark's result file: what ran it, when and where, then its numbers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = {
        "benchmark": benchmark,
        "command": "python " + shlex.join(sys.argv),
        "date": dt.date.today().isoformat(),
        "machine": machine(),
    }
    path.write_text(json.dumps({**head, **body}, indent=1) + "\n")


def machine() -> dict:
    """Where a result was measured. The package versions are part of it: the GP's fit is floating point,
    and another numpy, scipy or scikit-learn build can turn a near-tie between two configs the other way,
    so a seed's run is reproducible on one machine and package set, not across them. The CPU model and the
    BLAS kernel OpenBLAS picked for it are recorded too: one wheel runs different kernels on different CPUs."""
    from importlib.metadata import version

    import numpy  # noqa: F401  loaded, so that threadpool_info sees the BLAS the model fits run on
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    return {
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu": _cpu_model(),
        "blas": sorted({f"{i.get('internal_api')} {i.get('architecture')}" for i in threadpool_info()}),
        "cores": os.cpu_count(),
        "packages": {p: version(p) for p in ("numpy", "scipy", "scikit-learn", "optuna")},
    }


def _cpu_model() -> str:
    """'AMD EPYC, family 25 model 17' from /proc/cpuinfo (Linux); the platform's processor name elsewhere."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines()[:30] if ":" in line)
    except OSError:
        return platform.processor()
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return f"{fields.get('model name', '?')}, family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"


if __name__ == "__main__":
    main()
