"""Co-design report: tuned results of one or more jobs, per hardware x precision, as Markdown or HTML with
matplotlib plots.

Without a plan it lists every tuned problem with its time, throughput, % of the roofline (from the peak
table) and energy. With a ``plan.json`` from ``cotune plan`` it reassembles the decoder layer: per batch,
the tuned time of each operation x its count per layer (averaged over the layers, since an MoE model's dense
and MoE layers run different operations), the layer time, an estimated decode rate
(tokens per step / (layers x layer time + the LM head)) and joules per token where energy was measured.
The estimate covers only the operations that were tuned; the report names the ones that were not.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cotune.tuner.device.gpu_specs import lookup, roofline_fraction
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.types import Problem


@dataclass(frozen=True)
class Result:
    problem: Problem
    device: str
    time_s: float
    energy_j: float
    job: str

    @property
    def roofline(self) -> float | None:
        spec = lookup(self.device)
        if spec is None:
            return None
        k = get_kernel(self.problem.kernel)
        return roofline_fraction(
            k.flops(self.problem), k.bytes_moved(self.problem), self.time_s, self.problem.dtype.value, spec
        )


@dataclass
class LayerEstimate:
    device: str
    precision: str
    batch: int
    tokens: int
    ops: dict[str, float] = field(default_factory=dict)  # op name -> seconds per layer (time x count)
    lm_head_s: float = 0.0
    energy_j: float | None = 0.0  # per step; None once any op lacks an energy reading
    missing: list[str] = field(default_factory=list)
    layers: int = 0

    @property
    def layer_s(self) -> float:
        return sum(self.ops.values())

    @property
    def tokens_per_s(self) -> float | None:
        step = self.layers * self.layer_s + self.lm_head_s
        return self.tokens / step if step > 0 else None

    @property
    def joules_per_token(self) -> float | None:
        return self.energy_j / self.tokens if self.energy_j else None


def results_from_exports(exports: Sequence[dict[str, Any]]) -> list[Result]:
    return [
        Result(
            Problem.make(e["kernel"], e["shape"], e["dtype"]),
            e["device"]["name"],
            float(e["metrics"]["time_s"]),
            float(e["metrics"].get("energy_j", 0.0)),
            x["job"],
        )
        for x in exports
        for e in x["entries"]
    ]


def _is_head(problem: dict[str, Any]) -> bool:
    """The LM head runs once per forward pass; plans written before ``scope`` existed marked it with layers 1."""
    return problem.get("scope", "head" if problem["layers"] == 1 else "all") == "head"


def estimate_layers(results: Sequence[Result], plan: dict[str, Any]) -> list[LayerEstimate]:
    index = {(r.device, r.problem.dtype.value, r.problem.key): r for r in results}
    total_layers = plan.get("layers", {}).get("all")
    out = []
    for device in sorted({r.device for r in results}):
        for precision in sorted({r.problem.dtype.value for r in results if r.device == device}):
            for batch in plan["batches"]:
                est = LayerEstimate(device, precision, batch, tokens=0)
                for op, p in plan["problems"].items():
                    step = next((s for s in p["per_batch"] if s["batch"] == batch), None)
                    if step is None:
                        est.missing.append(op)
                        continue
                    head = _is_head(p)
                    est.tokens = est.tokens or step["tokens"] if head else step["tokens"]
                    key = Problem.make(p["kernel"], step["shape"], precision).key
                    r = index.get((device, precision, key))
                    if r is None:
                        est.missing.append(op)
                        continue
                    seconds = r.time_s * p["count_per_layer"]
                    if head:
                        est.lm_head_s += seconds
                    else:  # averaged over all layers: an MoE model's dense and MoE layers run different ops
                        est.layers = total_layers or p["layers"]
                        est.ops[op] = seconds * p["layers"] / est.layers
                    calls = p["count_per_layer"] * p["layers"]
                    est.energy_j = (
                        est.energy_j + r.energy_j * calls if est.energy_j is not None and r.energy_j else None
                    )
                if est.ops or est.lm_head_s:
                    out.append(est)
    return out


def _plots(results: Sequence[Result], estimates: Sequence[LayerEstimate], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if estimates:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        series: dict[tuple[str, str], list[LayerEstimate]] = {}
        for e in estimates:
            series.setdefault((e.device, e.precision), []).append(e)
        for (device, precision), ests in series.items():
            ax1.plot(
                [e.batch for e in ests], [e.tokens_per_s or 0 for e in ests], marker="o", label=f"{device} {precision}"
            )
        ax1.set(xscale="log", yscale="log", xlabel="batch", ylabel="estimated decode tokens/s", title="decode rate")
        ax1.legend(fontsize=7)
        labels = [f"{e.device[:18]} {e.precision} b{e.batch}" for e in estimates]
        ops = sorted({op for e in estimates for op in e.ops})
        bottom = [0.0] * len(estimates)
        for op in ops:
            vals = [e.ops.get(op, 0.0) * 1e6 for e in estimates]
            ax2.barh(labels, vals, left=bottom, label=op)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax2.set(xlabel="tuned time per layer (us)", title="layer time by operation")
        ax2.legend(fontsize=7)
        ax2.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        paths.append(out_dir / "layer_time.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.3 * len(results))))
    ax.barh([f"{r.device[:18]} {r.problem.key}"[:90] for r in results], [r.time_s * 1e6 for r in results])
    ax.set(xscale="log", xlabel="tuned time (us)", title="every tuned problem")
    ax.tick_params(axis="y", labelsize=6)
    fig.tight_layout()
    paths.append(out_dir / "problems.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def _fmt(value: float | None, unit: str = "", scale: float = 1.0, digits: int = 3) -> str:
    return "-" if value is None else f"{value * scale:.{digits}g}{unit}"


def render_markdown(
    jobs: Sequence[str], results: Sequence[Result], estimates: Sequence[LayerEstimate], images: Sequence[Path]
) -> str:
    lines = [f"# cotune report: {', '.join(jobs)}", ""]
    if estimates:
        lines += ["## Decoder layer, per hardware x precision", ""]
        lines += [
            "| hardware | precision | batch | layer time | LM head | est. decode tokens/s | J/token | not tuned |"
        ]
        lines += ["|---|---|---|---|---|---|---|---|"]
        for e in estimates:
            lines.append(
                f"| {e.device} | {e.precision} | {e.batch} | {_fmt(e.layer_s, ' us', 1e6)} | "
                f"{_fmt(e.lm_head_s or None, ' us', 1e6)} | {_fmt(e.tokens_per_s, '', 1, 4)} | "
                f"{_fmt(e.joules_per_token)} | {', '.join(e.missing) or '-'} |"
            )
        lines.append("")
    lines += [
        "## Tuned problems",
        "",
        "| hardware | problem | time | % of roofline | J/call | job |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.device} | {r.problem.key} | {_fmt(r.time_s, ' us', 1e6)} | {_fmt(r.roofline, ' %', 100)} | "
            f"{_fmt(r.energy_j or None)} | {r.job} |"
        )
    lines += ["", *[f"![{p.stem}]({p.name})" for p in images], ""]
    return "\n".join(lines)


def to_html(markdown: str, images: Sequence[Path]) -> str:
    """A self-contained page: the Markdown tables as preformatted text, the plots embedded."""
    import html

    body = "".join(
        f'<p><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"></p>'
        for p in images
    )
    text = "\n".join(line for line in markdown.splitlines() if not line.startswith("!["))
    return f"<!doctype html><meta charset=utf-8><title>cotune report</title><pre>{html.escape(text)}</pre>{body}\n"


def write_report(
    jobs: Sequence[str], exports: Sequence[dict[str, Any]], plan: dict[str, Any] | None, output: Path
) -> list[Path]:
    """Write the report (``.md`` or ``.html``) and its plots next to it; returns every file written."""
    results = results_from_exports(exports)
    estimates = estimate_layers(results, plan) if plan else []
    output.parent.mkdir(parents=True, exist_ok=True)
    images = _plots(results, estimates, output.parent)
    markdown = render_markdown(jobs, results, estimates, images)
    output.write_text(to_html(markdown, images) if output.suffix == ".html" else markdown)
    (output.parent / "report.json").write_text(
        json.dumps([e.__dict__ | {"tokens_per_s": e.tokens_per_s, "layer_s": e.layer_s} for e in estimates], indent=2)
    )
    return [output, output.parent / "report.json", *images]
