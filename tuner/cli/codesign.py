"""Co-design commands of the ``cotune`` CLI: plan (job specs from a model config), report (per hardware x
precision, with plots) and revalidate (re-time an export, re-tune what regressed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from cotune.tuner.cli.console import clean_errors, fmt_time, out, trial_progress
from cotune.tuner.cli.stores import MlflowOpt, StorageOpt, resolve_settings, storage_for
from rich.table import Table


@clean_errors
def plan(
    model_config: Annotated[Path, typer.Argument(metavar="MODEL_CONFIG.json", help="a Hugging Face config.json")],
    batch: Annotated[
        list[int] | None,
        typer.Option(
            "--batch",
            help="batch size (repeat the flag). Default: 1, 16 and 64, and for an MoE model's fused_moe spec also "
            "vLLM's 18 tuning sizes 1..4096 (the M keys of the servers' config files); --batch replaces both",
        ),
    ] = None,
    precision: Annotated[list[str], typer.Option("--precision", help="repeat for several")] = ["bf16"],  # noqa: B006
    hardware: Annotated[list[str], typer.Option("--hardware", help="GPU kinds to compare (repeat)")] = [],  # noqa: B006
    trials: Annotated[int, typer.Option(min=1, help="trial budget per problem")] = 50,
    seq_len: Annotated[int, typer.Option("--seq-len", min=1, help="KV length (decode) or prompt length")] = 2048,
    phase: Annotated[str, typer.Option(help="decode | prefill")] = "decode",
    tp: Annotated[int, typer.Option("--tp", min=1, max=1024, help="tensor-parallel ranks (vLLM's sharding)")] = 1,
    ep: Annotated[
        int,
        typer.Option(
            "--ep", min=1, max=1024, help="expert-parallel ranks: E/ep whole experts per rank (vLLM's EP = TP x DP)"
        ),
    ] = 1,
    name: Annotated[str | None, typer.Option(help="job name prefix (default: the config file's name)")] = None,
    serving_p99_ms: Annotated[
        int | None, typer.Option("--serving-p99-ms", min=1, help="also a serving-level job under this p99 budget")
    ] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="directory for the specs and plan.json")] = Path(
        "cotune-plan"
    ),
) -> None:
    """Write job specs for every GEMM, attention and fused-MoE problem of one forward pass on one rank."""
    from cotune.tuner.codesign.plan import write_plan
    from cotune.tuner.codesign.sharding import Parallelism

    paths = write_plan(
        model_config,
        output,
        batch or None,
        precision,
        hardware,
        trials,
        seq_len,
        name=name,
        phase=phase,  # type: ignore[arg-type]
        serving_p99_ms=serving_p99_ms,
        parallel=Parallelism(tp=tp, ep=ep),
    )
    manifest = json.loads((output / "plan.json").read_text())
    for p in paths:
        out.print(f"wrote {p}")
    layers = manifest["layers"]
    split = f" ({layers['dense']} dense, {layers['moe']} MoE)" if layers["moe"] else ""
    out.print(f"{manifest['config']['family']}: {layers['all']} layers{split}; per rank of tp {tp}, ep {ep}")
    if "moe_batches" in manifest:
        out.print(f"fused_moe M: {', '.join(map(str, manifest['moe_batches']))}", highlight=False)
    for skip in manifest.get("skipped", []):
        out.print(f"[yellow]skipped {skip['kernel']}[/yellow] ({', '.join(skip['problems'])}): {skip['reason']}")
    for item in manifest["not_modelled"]:
        out.print(f"not modelled: {item}", highlight=False)
    specs = [p for p in paths if p.suffix == ".yaml"]
    if specs:
        out.print(f"next: cotune tune {specs[0]}  (or cotune submit {specs[0]} --hardware <gpu>)")


@clean_errors
def report(
    jobs: Annotated[list[str], typer.Argument(metavar="JOB...", help="jobs to compare (e.g. one per GPU kind)")],
    plan_file: Annotated[Path | None, typer.Option("--plan", help="plan.json from cotune plan")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="report.md or report.html")] = Path(
        "cotune-report/report.md"
    ),
    storage: StorageOpt = None,
    mlflow_uri: MlflowOpt = None,
) -> None:
    """Co-design report: per hardware x precision, tuned time per layer, estimated decode tokens/s, % of
    roofline and J/token, with plots; logged to each job's MLflow parent runs."""
    from cotune.tuner.codesign.report import write_report
    from cotune.tuner.errors import SpecError
    from cotune.tuner.export.build import build_export
    from cotune.tuner.store.studies import job_studies
    from cotune.tuner.track.mlflow_tracker import open_client

    exports = [build_export(storage_for(j, storage), j) for j in jobs]
    plan_data = None
    if plan_file is not None:
        try:
            plan_data = json.loads(plan_file.read_text())
            plan_data["problems"], plan_data["batches"]  # noqa: B018 - the keys the report reads
        except (OSError, ValueError, KeyError) as exc:
            raise SpecError(f"{plan_file}: not a plan.json from cotune plan ({type(exc).__name__}: {exc})") from None
    files = write_report(jobs, exports, plan_data, output)
    out.print(f"wrote {', '.join(str(f) for f in files)}")
    client = open_client(resolve_settings(storage, mlflow_uri).mlflow_tracking_uri)
    runs = {s.user_attrs.get("mlflow_run_id") for j in jobs for s in job_studies(storage_for(j, storage), j)}
    for run_id in sorted(r for r in runs if r):
        for f in files:
            client.log_artifact(run_id, str(f), "report")
    out.print(f"logged to {len([r for r in runs if r])} MLflow run(s) under artifacts/report")


@clean_errors
def revalidate(
    export_file: Annotated[Path, typer.Argument(metavar="EXPORT")],
    threshold: Annotated[float, typer.Option(min=0, help="slowdown that counts as a regression (0.05 = 5 %)")] = 0.05,
    retune: Annotated[bool, typer.Option(help="re-tune the regressed problems, old winners first")] = True,
    trials: Annotated[int, typer.Option(min=1, help="trial budget per re-tuned problem")] = 30,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="export of the re-tuned job")] = None,
    storage: StorageOpt = None,
    mlflow_uri: MlflowOpt = None,
) -> None:
    """Re-measure an export's configs on this toolchain and device; re-tune only the regressed problems."""
    from cotune.tuner.errors import SpecError
    from cotune.tuner.export.revalidate import revalidate_here

    try:
        data = json.loads(export_file.read_text())
        data["job"], [e["kernel"] for e in data["entries"]]  # noqa: B018 - the keys revalidation reads
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpecError(f"{export_file}: not a cotune export ({type(exc).__name__}: {exc})") from None
    checks = revalidate_here(data, threshold)
    legend = (
        f"regressed: more than {threshold:.0%} slower and beyond the noise (how much the timing moved between "
        "repeated measurements of the config here, or its spread at export); noise: slower, but within it"
    )
    table = Table(title=f"revalidate {export_file}", caption=legend, caption_justify="left")
    for col in ("problem", "exported", "now", "change", "noise", "status"):
        table.add_column(col, no_wrap=col != "problem", overflow="fold" if col == "problem" else "ellipsis")
    for c in checks:
        change = "-" if c.change is None else f"{c.change:+.1%}"
        now = "-" if c.new_time_s is None else fmt_time(c.new_time_s)
        noise = "-" if c.noise is None else f"±{c.noise:.0%}"
        table.add_row(c.problem.key, fmt_time(c.old_time_s), now, change, noise, c.status.value)
    out.print(table)
    for c in checks:
        for line in ([c.reason] if c.reason and c.status.value != "ok" else []) + list(c.toolchain_changes):
            out.print(f"  {c.problem.key}: {line}", highlight=False)
    stale = [c for c in checks if c.needs_retune]
    if not stale:
        out.print("no regressions: nothing to re-tune")
        return
    if retune:
        _retune(data["job"], stale, trials, output, storage, mlflow_uri)


def _retune(job: str, stale: list[Any], trials: int, output: Path | None, storage: str | None, mlflow_uri: str | None):
    from cotune.tuner.export.build import build_export, write_export
    from cotune.tuner.export.revalidate import retune
    from cotune.tuner.spec.settings import ensure_parent_dir
    from cotune.tuner.track.mlflow_tracker import MlflowTracker

    settings = resolve_settings(storage, mlflow_uri)
    ensure_parent_dir(settings.storage)
    ensure_parent_dir(settings.mlflow_tracking_uri)
    new_tracker = lambda: MlflowTracker(settings.mlflow_tracking_uri)  # noqa: E731
    with trial_progress("min_time") as on_progress:
        for line in retune(job, stale, trials, settings.storage, new_tracker, on_progress):
            out.print(line, highlight=False)
    if output:
        data = build_export(settings.storage, f"{job}-revalidated")
        write_export(data, output)
        out.print(f"wrote {output} ({len(data['entries'])} entries)")
