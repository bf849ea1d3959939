"""The report's plots (matplotlib, PNG): sized to their content so every label is whole and legible."""

from __future__ import annotations

import re
from pathlib import Path

from cotune.tuner.codesign.report import Section
from cotune.tuner.codesign.report_page import BASELINE_LABELS, problem_label

DPI = 110
WIDTH_IN = 10.0


def plots(parts: list[Section], out_dir: Path) -> dict[str, Path]:
    """Write each section's plots and the cross-section one; returns them keyed ``"<section index>:<name>"``
    or ``"all:<name>"``, in the order the page shows them."""
    import matplotlib

    matplotlib.use("Agg")
    images: dict[str, Path] = {}
    for i, section in enumerate(parts):
        stem = _slug(f"{section.device}-{section.precision}")
        if section.estimates:
            images[f"{i}:step"] = _step_plot(section, out_dir / f"{stem}-step.png")
        images[f"{i}:problems"] = _problems_plot(section, out_dir / f"{stem}-problems.png")
        if any(r.baselines for r in section.results):
            images[f"{i}:baselines"] = _baselines_plot(section, out_dir / f"{stem}-baselines.png")
    with_model = [s for s in parts if s.estimates]
    if len(with_model) > 1:
        images["all:decode"] = _decode_plot(with_model, out_dir / "decode-rate.png")
    return images


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80]


def _save(fig, path: Path) -> Path:  # noqa: ANN001 - a matplotlib Figure
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _problems_plot(section: Section, path: Path) -> Path:
    import matplotlib.pyplot as plt

    results = section.results
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 1.2 + 0.32 * len(results)))
    labels = [problem_label(r) + (f"  [{r.job}]" if len({x.job for x in results}) > 1 else "") for r in results]
    ax.barh(labels, [r.time_s * 1e6 for r in results], color="#4c72b0")
    ax.invert_yaxis()
    ax.set(xscale="log", xlabel="re-measured time per call (µs, log scale)")
    ax.set_title(f"Tuned problems on {section.device}, {section.precision}", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    return _save(fig, path)


def _step_plot(section: Section, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ests = section.estimates
    fig, (rate, parts) = plt.subplots(1, 2, figsize=(WIDTH_IN, 4.2))
    rate.plot([e.batch for e in ests], [e.tokens_per_s or 0 for e in ests], marker="o")
    rate.set(xscale="log", yscale="log", xlabel="batch", ylabel="est. tokens/s", title="estimated decode rate")
    ops = sorted({op for e in ests for op in e.ops})
    bottom = [0.0] * len(ests)
    labels = [str(e.batch) for e in ests]
    for op in [*ops, "lm_head"]:
        values = [(e.lm_head_s if op == "lm_head" else e.ops.get(op, 0.0)) * 1e3 for e in ests]
        if any(values):
            parts.bar(labels, values, bottom=bottom, label=op)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    parts.set(xlabel="batch", ylabel="ms per step", title="step time by operation")
    parts.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def _baselines_plot(section: Section, path: Path) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in section.results if r.baselines]
    names = sorted({b.name for r in rows for b in r.baselines})
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 4.2))
    x = np.arange(len(rows))
    width = 0.8 / (1 + len(names))
    ax.bar(x, [r.time_s * 1e6 for r in rows], width, label="tuned (cotune)")
    for j, name in enumerate(names, start=1):
        times = [next((b.time_s for b in r.baselines if b.name == name), None) for r in rows]
        ax.bar(x + j * width, [t * 1e6 if t else 0 for t in times], width, label=BASELINE_LABELS.get(name, name))
    batch = [r.problem.dims.get(_batch_dim(r), "?") for r in rows]
    ax.set_xticks(x + width * len(names) / 2, [f"M={m}" for m in batch], fontsize=8)
    ax.set(ylabel="time per call (µs)", title="tuned against the server's configs")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _batch_dim(result) -> str:  # noqa: ANN001 - a Result
    from cotune.tuner.measure.registry import get_kernel

    return get_kernel(result.problem.kernel).batch_dim


def _decode_plot(parts: list[Section], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(WIDTH_IN, 4.5))
    for s in parts:
        ax.plot([e.batch for e in s.estimates], [e.tokens_per_s or 0 for e in s.estimates], marker="o",
                label=f"{s.device} · {s.precision}")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="est. decode tokens/s", title="hardware x precision")
    ax.legend(fontsize=8)
    return _save(fig, path)
