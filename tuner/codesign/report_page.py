"""The co-design report as a page: HTML with real tables and the plots embedded (one self-contained file), or
Markdown. Numbers are shown in the unit a reader compares in: µs/ms/s, GFLOP/s or TFLOP/s, % of roofline,
J per call, tokens/s and J per token."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cotune.tuner.codesign.report import Result, Section

BASELINE_LABELS = {"vllm_shipped": "vLLM shipped", "vllm_default": "vLLM default"}


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_rate(gflops: float | None) -> str:
    if not gflops:
        return "–"
    return f"{gflops / 1e3:.3g} TFLOP/s" if gflops >= 1e3 else f"{gflops:.3g} GFLOP/s"


def fmt_number(value: float | None, unit: str = "", digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}{unit}"


def fmt_count(value: float | None) -> str:
    """A rate such as tokens/s: whole numbers with thousands separators, small ones to 3 digits."""
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def fmt_pct(fraction: float | None) -> str:
    return "–" if fraction is None else f"{100 * fraction:.1f} %"


def problem_label(r: Result) -> str:
    """The kernel and its dims, without the dtype (the section names it)."""
    return f"{r.problem.kernel} " + " ".join(f"{k}={v}" for k, v in r.problem.shape)


def _tables(jobs: Sequence[str], section: Section) -> list[tuple[str, list[str], list[list[str]]]]:
    """(caption, header, rows) of each table in a section, shared by both renderings."""
    out = []
    if section.estimates:
        rows = [
            [
                str(e.batch),
                str(e.tokens),
                fmt_time(e.step_s - e.lm_head_s),
                fmt_time(e.lm_head_s or None),
                fmt_count(e.tokens_per_s),
                fmt_number(e.joules_per_token, " J"),
                ", ".join(e.missing) or "–",
            ]
            for e in section.estimates
        ]
        header = ["batch", "tokens / step", "all layers", "LM head", "est. tokens/s", "J/token", "not tuned"]
        out.append(("Model step, from the tuned operations", header, rows))
    several = len(jobs) > 1
    rows = []
    for r in section.results:
        row = [problem_label(r), fmt_time(r.time_s), fmt_rate(r.gflops), fmt_pct(r.roofline)]
        row.append(fmt_number(r.energy_j or None, " J"))
        rows.append([*row, r.job] if several else row)
    header = ["problem", "time", "throughput", "% of roofline", "J/call", *(["job"] if several else [])]
    out.append(("Tuned problems (re-measured winners)", header, rows))
    names = sorted({b.name for r in section.results for b in r.baselines})
    with_baselines = [r for r in section.results if r.baselines]
    if with_baselines:
        rows = []
        for r in with_baselines:
            row = [problem_label(r), fmt_time(r.time_s)]
            for name in names:
                b = next((b for b in r.baselines if b.name == name), None)
                if b is None:
                    row.append("–")
                elif b.time_s is None:
                    row.append(f"failed: {b.failure or '?'}")
                else:
                    row.append(f"{fmt_time(b.time_s)} (tuned {b.time_s / r.time_s:.2f}× faster)")
            rows.append(row)
        header = ["problem", "tuned", *(BASELINE_LABELS.get(n, n) for n in names)]
        out.append(("Tuned against the server's configs, measured in the same study", header, rows))
    return out


def _comparison_table(compared: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]] | None:
    if not compared:
        return None
    columns = sorted({c for row in compared for c in row["times_s"]})
    rows = [[row["problem"], *(fmt_time(row["times_s"].get(c)) for c in columns)] for row in compared]
    return ["problem", *columns], rows


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1f2328; max-width: 1200px; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: 0.6rem 0 1.4rem; font-size: 0.9rem; }
caption { text-align: left; font-weight: 600; padding: 0.3rem 0; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.6rem; text-align: right; }
th { background: #f6f8fa; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #d0d7de; margin: 0.5rem 0; }
.note { color: #59636e; font-size: 0.85rem; }
"""


def _html_table(caption: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def render_html(jobs: list[str], parts: list[Section], compared: list[dict[str, Any]], images: dict[str, Path]) -> str:
    """A self-contained page: tables, then each section's plots, as embedded PNGs."""
    out = [
        "<!doctype html><html lang=en><meta charset=utf-8>",
        f"<title>cotune report: {html.escape(', '.join(jobs))}</title><style>{STYLE}</style><body>",
        f"<h1>cotune report: {html.escape(', '.join(jobs))}</h1>",
        '<p class="note">Times are the re-measured winners (median). % of roofline uses the device\'s datasheet '
        "peak; estimates add up only the operations that were tuned.</p>",
    ]
    for i, section in enumerate(parts):
        out.append(f"<h2>{html.escape(section.device)} · {html.escape(section.precision)}</h2>")
        out += [_html_table(*table) for table in _tables(jobs, section)]
        out += [_image(path) for key, path in images.items() if key.startswith(f"{i}:")]
    table = _comparison_table(compared)
    if table:
        out.append("<h2>Side by side</h2>")
        out.append(_html_table("The same problem in several jobs", *table))
    out += [_image(path) for key, path in images.items() if key.startswith("all:")]
    return "\n".join(out) + "\n</body></html>\n"


def _md_table(caption: str, header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [f"**{caption}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*lines, *("| " + " | ".join(row) + " |" for row in rows), ""]


def render_markdown(
    jobs: list[str], parts: list[Section], compared: list[dict[str, Any]], images: dict[str, Path]
) -> str:
    lines = [f"# cotune report: {', '.join(jobs)}", ""]
    for i, section in enumerate(parts):
        lines += [f"## {section.device} · {section.precision}", ""]
        for table in _tables(jobs, section):
            lines += _md_table(*table)
        lines += [f"![{p.stem}]({p.name})" for key, p in images.items() if key.startswith(f"{i}:")] + [""]
    table = _comparison_table(compared)
    if table:
        lines += ["## Side by side", "", *_md_table("The same problem in several jobs", *table)]
    lines += [f"![{p.stem}]({p.name})" for key, p in images.items() if key.startswith("all:")]
    return "\n".join(lines) + "\n"
