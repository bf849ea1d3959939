"""Co-design report: tuned results of one or more jobs, one section per hardware x precision, as an HTML page
(or Markdown) with plots, and the same data in ``report.json``.

Each section lists every tuned problem with its time, throughput, % of the roofline (from the peak table)
and energy. A problem whose kernel has baselines (``Kernel.baselines``: for fused MoE, the config vLLM ships
for the shape and vLLM's default rule) shows the winner against each, measured in the same study. With a
``plan.json`` from ``cotune plan`` a section also reassembles the model: per batch, the tuned time of each
operation x its count per layer, the layer time, an estimated decode rate (tokens per step / (layers x layer
time + the LM head)) and joules per token where energy was measured. The estimate covers only the
operations that were tuned; the report names the ones that were not. Several jobs of the same problems (one
per GPU kind, say) are also compared side by side.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cotune.tuner.device.gpu_specs import lookup, roofline_fraction
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.types import Problem


@dataclass(frozen=True)
class Baseline:
    name: str
    time_s: float | None  # None: it failed here
    failure: str | None = None


@dataclass(frozen=True)
class Result:
    problem: Problem
    device: str
    time_s: float
    energy_j: float
    job: str
    gflops: float = 0.0
    baselines: tuple[Baseline, ...] = ()

    @property
    def roofline(self) -> float | None:
        spec = lookup(self.device)
        if spec is None:
            return None
        k = get_kernel(self.problem.kernel)
        return roofline_fraction(
            k.flops(self.problem), k.bytes_moved(self.problem), self.time_s, self.problem.dtype.value, spec
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "device": self.device,
            "kernel": self.problem.kernel,
            "shape": self.problem.dims,
            "dtype": self.problem.dtype.value,
            "time_s": self.time_s,
            "gflops": self.gflops,
            "roofline": self.roofline,
            "energy_j": self.energy_j or None,
            "baselines": [asdict(b) for b in self.baselines],
        }


@dataclass
class LayerEstimate:
    device: str
    precision: str
    batch: int
    tokens: int
    ops: dict[str, float] = field(default_factory=dict)  # op name -> seconds per step (time x count x layers)
    lm_head_s: float = 0.0
    energy_j: float | None = 0.0  # per step; None once any op lacks an energy reading
    missing: list[str] = field(default_factory=list)

    @property
    def step_s(self) -> float:
        return sum(self.ops.values()) + self.lm_head_s

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.step_s if self.step_s > 0 else None

    @property
    def joules_per_token(self) -> float | None:
        return self.energy_j / self.tokens if self.energy_j else None

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "step_s": self.step_s,
            "tokens_per_s": self.tokens_per_s,
            "joules_per_token": self.joules_per_token,
        }


@dataclass
class Section:
    """One hardware x precision: its tuned problems and, with a plan, its model estimates."""

    device: str
    precision: str
    results: list[Result]
    estimates: list[LayerEstimate]

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "precision": self.precision,
            "problems": [r.to_json() for r in self.results],
            "model": [e.to_json() for e in self.estimates],
        }


def results_from_exports(exports: Sequence[dict[str, Any]]) -> list[Result]:
    out = []
    for x in exports:
        for e in x["entries"]:
            baselines = tuple(
                Baseline(name, b.get("metrics", {}).get("time_s"), b.get("failure"))
                for name, b in sorted(e.get("baselines", {}).items())
            )
            out.append(
                Result(
                    Problem.make(e["kernel"], e["shape"], e["dtype"]),
                    e["device"]["name"],
                    float(e["metrics"]["time_s"]),
                    float(e["metrics"].get("energy_j", 0.0)),
                    x["job"],
                    float(e["metrics"].get("gflops", 0.0)),
                    baselines,
                )
            )
    return out


def _is_head(problem: dict[str, Any]) -> bool:
    """The LM head runs once per forward pass; plans written before ``scope`` existed marked it with layers 1."""
    return problem.get("scope", "head" if problem["layers"] == 1 else "all") == "head"


def estimate_layers(results: Sequence[Result], plan: dict[str, Any]) -> list[LayerEstimate]:
    """Per device, precision and batch: the forward step rebuilt from the plan's operations, each tuned time
    times how often the step runs it (count per layer x layers)."""
    index = {(r.device, r.problem.dtype.value, r.problem.key): r for r in results}
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
                    est.tokens = max(est.tokens, step["tokens"])
                    key = Problem.make(p["kernel"], step["shape"], precision).key
                    r = index.get((device, precision, key))
                    if r is None:
                        est.missing.append(op)
                        continue
                    calls = p["count_per_layer"] * p["layers"]
                    if _is_head(p):  # shown apart; every op counts in the step time
                        est.lm_head_s += r.time_s * calls
                    else:
                        est.ops[op] = r.time_s * calls
                    est.energy_j = (
                        est.energy_j + r.energy_j * calls if est.energy_j is not None and r.energy_j else None
                    )
                if est.ops or est.lm_head_s:
                    out.append(est)
    return out


def sections(results: Sequence[Result], estimates: Sequence[LayerEstimate]) -> list[Section]:
    keys = sorted({(r.device, r.problem.dtype.value) for r in results})
    return [
        Section(
            device,
            precision,
            sorted(
                (r for r in results if (r.device, r.problem.dtype.value) == (device, precision)),
                key=lambda r: (r.problem.kernel, sorted(r.problem.dims.items()), r.job),
            ),
            [e for e in estimates if (e.device, e.precision) == (device, precision)],
        )
        for device, precision in keys
    ]


def comparison(results: Sequence[Result]) -> list[dict[str, Any]]:
    """The problems tuned by more than one job (or on more than one device), each job's time side by side."""
    by_problem: dict[str, dict[str, float]] = {}
    for r in results:
        by_problem.setdefault(r.problem.key, {})[f"{r.job} @ {r.device}"] = r.time_s
    return [{"problem": key, "times_s": times} for key, times in sorted(by_problem.items()) if len(times) > 1]


def write_report(
    jobs: Sequence[str], exports: Sequence[dict[str, Any]], plan: dict[str, Any] | None, output: Path
) -> list[Path]:
    """Write the report (``.html`` or ``.md``), ``report.json`` and the plots beside it; returns every file."""
    from cotune.tuner.codesign.report_page import render_html, render_markdown
    from cotune.tuner.codesign.report_plots import plots

    results = results_from_exports(exports)
    estimates = estimate_layers(results, plan) if plan else []
    parts = sections(results, estimates)
    compared = comparison(results)
    output.parent.mkdir(parents=True, exist_ok=True)
    images = plots(parts, output.parent)
    render = render_html if output.suffix == ".html" else render_markdown
    output.write_text(render(list(jobs), parts, compared, images))
    data = {
        "jobs": list(jobs),
        "plan": {"model": plan.get("model"), "batches": plan["batches"]} if plan else None,
        "sections": [s.to_json() for s in parts],
        "comparison": compared,
    }
    (output.parent / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    return [output, output.parent / "report.json", *images.values()]
