"""The ``cotune`` command line. Expected errors print one line and exit 1; no traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from cotune.tuner.cli import codesign as codesign_cli
from cotune.tuner.cli import service as service_cli
from cotune.tuner.cli.console import SPREAD_LEGEND, clean_errors, err, fmt_time, out, trial_progress
from cotune.tuner.cli.service import is_service_job, show_record
from cotune.tuner.cli.stores import MlflowOpt, StorageOpt, mlflow_for, resolve_settings, storage_for
from rich import box
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="cotune: kernel autotuner (Optuna + MLflow)")


@app.command()
@clean_errors
def validate(
    spec: Path,
    device: Annotated[
        str | None, typer.Option(help="a recorded device profile (e.g. nvidia-a100-sxm4-80gb): count feasible configs")
    ] = None,
) -> None:
    """Check a job spec and its search space without running anything; with --device, how many configs of
    each problem that device can run, and why the others are pruned (no GPU needed)."""
    from cotune.tuner.measure.registry import get_kernel
    from cotune.tuner.spec.job import load_spec

    job = load_spec(spec)
    kernel = get_kernel(job.kernel)
    from cotune.tuner.space.search_space import load_space

    space = (
        load_space(job.search_space, predicates=kernel.predicates, shape_dims=kernel.shape_dims)
        if job.search_space
        else kernel.space()
    )
    problems = job.expand()
    seeds = f", {len(space.seeds)} known-good seed(s)" if space.seeds else ""
    out.print(f"{spec}: ok — kernel {job.kernel}, {len(problems)} problem(s), space of {space.size} points{seeds}")
    if device is None:
        return
    from collections import Counter

    from cotune.tuner.device.profiles import recorded_profile

    profile = recorded_profile(device)
    for p in problems:
        reasons = Counter()
        for config in space.points():
            reason = space.violation(config, p, profile)
            if reason:
                reasons[reason.split(":")[0].split(" (")[0]] += 1
        feasible = space.size - sum(reasons.values())
        top = ", ".join(f"{name} {n}" for name, n in reasons.most_common(3))
        out.print(f"  {p.key} on {profile.name}: {feasible} feasible" + (f"; pruned by {top}" if top else ""))


@app.command()
@clean_errors
def tune(
    spec: Path,
    storage: StorageOpt = None,
    mlflow_uri: Annotated[str | None, typer.Option("--mlflow-uri", help="MLflow tracking URI")] = None,
    export: Annotated[Path | None, typer.Option(help="also write the best configs to this JSON")] = None,
) -> None:
    """Run a tuning job locally: one study per problem, trials in an isolated child process."""
    from cotune.tuner.device.profiles import device_for
    from cotune.tuner.driver import tune_job
    from cotune.tuner.measure.registry import get_kernel
    from cotune.tuner.spec.job import load_spec
    from cotune.tuner.spec.settings import ensure_parent_dir
    from cotune.tuner.store.studies import open_storage
    from cotune.tuner.track.mlflow_tracker import MlflowTracker

    job = load_spec(spec)
    kernel = get_kernel(job.kernel)
    device = device_for(kernel.name, kernel.device_kinds)
    settings = resolve_settings(storage, mlflow_uri, job)
    # Each store is checked before anything is written for the next, so a bad URL leaves nothing behind.
    ensure_parent_dir(settings.storage)
    open_storage(settings.storage)
    ensure_parent_dir(settings.mlflow_tracking_uri)
    tracker = MlflowTracker(settings.mlflow_tracking_uri)
    out.print(
        f"job [bold]{job.name}[/bold] on {device.name}: storage {settings.storage}, "
        f"MLflow {settings.mlflow_tracking_uri}"
    )
    with trial_progress(job.objective.value) as on_progress:
        outcomes = tune_job(job, settings.storage, device, tracker, on_progress)
    order = {p.key: i for i, p in enumerate(job.expand())}  # a table is tuned out of order; shown in order
    outcomes.sort(key=lambda o: order[o.problem.key])
    # Configs go under the table, one line each: as a column they wrap into unreadable cells at 80 columns.
    # without edges the problem column has room for a whole key at 80 columns (Rich otherwise folds it short)
    table = Table(
        title=f"{job.name}: re-measured winners",
        caption=SPREAD_LEGEND,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    energy = job.objective.uses_energy
    for col in ("problem", "ok/fail/pruned", "time", "GFLOP/s", "spread", *(("J/call",) if energy else ())):
        # a long problem key folds onto more lines instead of losing the part that tells rows apart
        table.add_column(col, no_wrap=col != "problem", overflow="fold" if col == "problem" else "ellipsis")
    for o in outcomes:
        b = o.best
        table.add_row(
            o.problem.key,
            f"{o.measured}/{o.failed}/{o.pruned}",
            fmt_time(b.remeasured.median_s) if b else "-",
            f"{b.remeasured.gflops:.1f}" if b else "-",
            f"{b.remeasured.spread:.1%}" if b else "-",
            *((f"{b.remeasured.energy_j:.3g}" if b else "-",) if energy else ()),
        )
    out.print(table)
    for o in outcomes:
        out.print(f"best {o.problem.key}: {_fmt_config(o.best.config.values) if o.best else '-'}", highlight=False)
    for o in outcomes:
        if o.infeasible:
            out.print(f"[yellow]{o.infeasible}[/yellow]", highlight=False)
    if job.accuracy_bound is not None:
        _print_precision_choice(job.accuracy_bound, outcomes, job.objective)
    _print_table_costs(outcomes, kernel.batch_dim)
    if tracker.experiment_id:
        out.print(
            f"MLflow runs: mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}  "
            f"then #/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
        )
    if export:
        _write_export(settings.storage, job.name, export)


def _print_table_costs(outcomes: list[Any], batch_dim: str) -> None:
    """Per table of batch sizes (problems differing only in the batch dim): the evaluations the search spent
    against an exhaustive sweep of the grid at every batch size, as vLLM's and SGLang's tuning scripts do."""
    tables: dict[tuple, list[Any]] = {}
    for o in outcomes:
        rest = ",".join(f"{k}={v}" for k, v in o.problem.shape if k != batch_dim)
        tables.setdefault((o.problem.kernel, rest, o.problem.dtype.value), []).append(o)
    for (kernel, rest, dtype), rows in tables.items():
        costs = [o.search for o in rows if o.search]
        if len(rows) < 2 or len(costs) < len(rows):
            continue
        spent = sum(c["evaluations"] for c in costs)
        exhaustive = sum(c["grid"] for c in costs)
        out.print(
            f"table {kernel}:{rest}:{dtype}: {len(rows)} {batch_dim} values, {spent} evaluations against "
            f"{exhaustive:,} for the whole grid at each ({spent / exhaustive:.1%})",
            highlight=False,
        )


def _print_precision_choice(bound: float, outcomes: list[Any], objective: Any) -> None:
    from cotune.tuner.codesign.precision_choice import choose

    for c in choose([(o.problem, o.best.remeasured) for o in outcomes if o.best], bound, objective):
        shape = ",".join(f"{k}={v}" for k, v in c.shape.items())
        ranked = ", ".join(
            f"{o.precision} {fmt_time(o.time_s)} err {o.error:.1e}{'' if o.within_bound else ' (over)'}"
            for o in c.options
        )
        out.print(f"precision for {c.kernel}:{shape} (error <= {bound:g}): {c.chosen or 'none'}; {ranked}")


@app.command()
@clean_errors
def status(
    job: Annotated[str | None, typer.Argument()] = None,
    storage: StorageOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List studies (all, or one job's) with trial counts and best values; a service job id shows its record."""
    if job and is_service_job(job):
        show_record(job, as_json)
        return
    import optuna
    from cotune.tuner.store.studies import open_storage
    from cotune.tuner.types import Measurement

    url = resolve_settings(storage, None).storage
    summaries = optuna.get_all_study_summaries(open_storage(url, create=False))
    rows = []
    for s in summaries:
        if job and s.user_attrs.get("job") != job:
            continue
        best = s.user_attrs.get("best")
        rows.append(
            {
                "study": s.study_name,
                "job": s.user_attrs.get("job"),
                "trials": s.n_trials,
                "best_config": best["config"] if best else None,
                "best_time_s": Measurement.from_json(best["remeasured"]).median_s if best else None,
            }
        )
    if job and not rows:
        raise_not_found(job, url)
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("study", "trials", "best config", "best time"):
        # a study name folds rather than losing the part that tells rows apart; the numbers stay on a line
        table.add_column(col, overflow="fold", no_wrap=col in ("trials", "best time"))
    for r in rows:
        table.add_row(
            r["study"],
            str(r["trials"]),
            _fmt_config(r["best_config"]) if r["best_config"] else "-",
            fmt_time(r["best_time_s"]) if r["best_time_s"] else "-",
        )
    out.print(table)


@app.command()
@clean_errors
def best(job: str, storage: StorageOpt = None) -> None:
    """Print the re-measured best config of each problem of a job, as JSON."""
    from cotune.tuner.export.build import build_export

    data = build_export(storage_for(job, storage), job)
    print(
        json.dumps(
            [{k: e[k] for k in ("kernel", "shape", "dtype", "config", "metrics")} for e in data["entries"]], indent=2
        )
    )


@app.command("mlflow-sync")
@clean_errors
def mlflow_sync(job: str, storage: StorageOpt = None, mlflow_uri: MlflowOpt = None) -> None:
    """Write into MLflow what a job's finished studies hold and it lacks (trial runs, study summaries), after
    the tracking server was down."""
    from cotune.tuner.track.mlflow_tracker import sync_job

    for study, written in sync_job(storage_for(job, storage), job, mlflow_for(job, mlflow_uri)):
        out.print(f"{study}: " + ("not finished; left alone" if written is None else f"{written} trial run(s) written"))


@app.command()
@clean_errors
def export(
    job: str,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="file (cotune format) or directory (other formats)")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="cotune | vllm | vllm-legacy | sglang | triton-server | autotune")
    ] = "cotune",
    verify: Annotated[bool, typer.Option(help="re-measure the exported configs on this machine first")] = True,
    force: Annotated[bool, typer.Option(help="replace files in the folder that another job or tool wrote")] = False,
    storage: StorageOpt = None,
) -> None:
    """Write a job's best configs: cotune's versioned JSON (for cotune.tuner.export.serving), vLLM/SGLang
    fused-MoE config files (vllm-legacy: for vLLM 0.10.1 and older), a Triton Inference Server model
    repository, or a @triton.autotune config module. A format the job cannot feed, or a file another tuning
    wrote, is refused before anything is re-measured or written."""
    from cotune.tuner.export.build import build_export, write_export
    from cotune.tuner.export.formats import check_targets, get_exporter, write_files

    exporter = get_exporter(fmt)
    data = build_export(storage_for(job, storage), job)
    used = exporter.entries(data)
    files = exporter.render(data)
    folder = output or Path("cotune-export") / fmt
    if fmt != "cotune":
        check_targets(folder, files, job, force=force)
    if verify:
        _verify_export({**data, "entries": used})
    if fmt == "cotune":  # one file, at the path given (the other formats write a tree under a directory)
        path = output or Path("cotune-best.json")
        write_export(data, path)
        out.print(f"wrote {path} ({len(data['entries'])} entries)")
        return
    for path in write_files(folder, files, job, force=force):
        out.print(f"wrote {path}")


def _verify_export(data: dict[str, Any]) -> None:
    """Every config must still compile, verify and run here, on the device it was tuned on."""
    from collections import Counter

    from cotune.tuner.errors import CotuneError
    from cotune.tuner.export.revalidate import CheckStatus, revalidate_here

    checks = revalidate_here(data, threshold=float("inf"))  # only whether each runs, not how fast
    bad = [c for c in checks if c.status in (CheckStatus.FAILED, CheckStatus.SKIPPED)]
    if bad:
        raise CotuneError(
            f"cannot verify {bad[0].problem.key}: {bad[0].reason} ({len(bad)} of {len(checks)} configs); "
            "export on the machine that tuned them, or without --verify"
        )
    for kernel, n in sorted(Counter(c.problem.kernel for c in checks).items()):
        out.print(f"verified {n} {kernel} config(s) on this machine")


@app.command()
@clean_errors
def replay(
    file: Path,
    sampler: Annotated[str, typer.Option(help="cotune | tpe | tpe-mv | random | gp | cmaes")] = "cotune",
    budget: Annotated[int, typer.Option(min=1, help="evaluations of distinct configs")] = 200,
    seed: int | None = None,
    wall_time_s: Annotated[float | None, typer.Option(help="simulated compile + benchmark time")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    related: Annotated[
        list[Path] | None,
        typer.Option(help="a recording of the same kernel elsewhere (another GPU), which the cotune sampler models"),
    ] = None,
    programs: Annotated[
        bool | None,
        typer.Option(
            "--programs/--configs",
            help="measure each program once, as a study does (default where the file names its cotune kernel "
            "and problem), or every config as its own evaluation",
        ),
    ] = None,
) -> None:
    """Replay a recording through the search, running no kernel: a Kernel Tuner brute-force cache, a T4
    results file, or a cotune trial table (trials.csv from a study's MLflow parent run)."""
    from cotune.tuner.search.replay import load_recording
    from cotune.tuner.search.replay import replay as run_replay

    data = load_recording(file)
    others = [load_recording(path) for path in related or []]
    for recording in (data, *others):
        for note in recording.notes:
            err.print(f"note: {recording.name}: {note}", highlight=False, soft_wrap=True)
    same_program = data.knows_programs if programs is None else programs
    result = run_replay(
        data,
        sampler=sampler,
        budget=budget,
        seed=seed,
        wall_time_s=wall_time_s,
        related=others,
        same_program=same_program,
    )
    if as_json:
        print(json.dumps(result.to_json()))
        return
    final = result.best_so_far[-1] if result.best_so_far else None
    out.print(
        f"{data.name}: {len(result.best_so_far)} evaluations ({result.failed} failed, "
        f"{result.pruned} outside the space, {result.duplicates} repeats"
        f"{' or configs of a measured program' if same_program else ''}), "
        f"{result.simulated_time_s:.1f} s simulated"
    )
    out.print(f"optimum {data.optimum:.4g} ms, best found {final:.4g} ms" if final else "no success")
    out.print("best so far (it changes only at these evaluations):")
    for n, best in result.improvements():
        out.print(f"  evaluation {n:>4}: {best:.4g} ms ({best / data.optimum:.3f}× the optimum)")
    for pct, n in result.to_json()["evaluations_to_within"].items():
        reached = f"after {n} evaluations" if n else f"not reached in {len(result.best_so_far)} evaluations"
        out.print(f"  within {pct} of the optimum: {reached}")


@app.command()
def kernels() -> None:
    """List the kernels in the registry."""
    from cotune.tuner.measure.registry import get_kernel, kernel_names

    table = Table()
    for col in ("kernel", "dims", "precisions", "devices", "description"):
        table.add_column(col)
    for name in kernel_names():
        k = get_kernel(name)
        table.add_row(
            name,
            ",".join(k.shape_dims),
            ",".join(p.value for p in k.precisions),
            ",".join(k.device_kinds),
            k.description,
        )
    out.print(table)


def _write_export(storage_url: str, job: str, path: Path) -> None:
    from cotune.tuner.export.build import build_export, write_export

    data = build_export(storage_url, job)
    write_export(data, path)
    out.print(f"wrote {path} ({len(data['entries'])} entries)")


def raise_not_found(job: str, url: str) -> None:
    from cotune.tuner.errors import NotFoundError

    raise NotFoundError(f"no studies for job {job!r} in {url}")


def _fmt_config(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())


for _command in (
    codesign_cli.plan,
    codesign_cli.report,
    codesign_cli.revalidate,
    service_cli.submit,
    service_cli.jobs,
    service_cli.watch,
    service_cli.wait,
    service_cli.cancel,
    service_cli.migrate_journal,
    service_cli.worker,
    service_cli.api,
):
    app.command()(_command)


def main() -> None:
    app(prog_name="cotune")


if __name__ == "__main__":
    sys.exit(main())
