"""`cotune report` and `cotune export --format` on a real CPU job (no GPU needed)."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from tests.browser import blank, browser, screenshot
from tests.cli import cotune, tune_and_export
from tests.test_end_to_end import SPEC


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    work = tmp_path_factory.mktemp("report")
    tune_and_export(work, SPEC)
    return work


def _plan(work) -> dict:
    """A plan.json in cotune plan's format whose 'layer' is two c_matmul calls, 4 layers, plus a head."""
    best = json.loads((work / "best.json").read_text())
    by_m = {e["shape"]["M"]: e for e in best["entries"]}

    def op(count: int, layers: int) -> dict:
        return {
            "kernel": "c_matmul",
            "count_per_layer": count,
            "layers": layers,
            "per_batch": [{"batch": m, "tokens": m, "shape": by_m[m]["shape"]} for m in (16, 64)],
        }

    plan = {"batches": [16, 64], "problems": {"proj": op(2, 4), "head": op(1, 1)}}
    (work / "plan.json").write_text(json.dumps(plan))
    return {m: e["metrics"]["time_s"] for m, e in by_m.items()}


def test_report_assembles_the_layer_and_logs_to_mlflow(job):
    times = _plan(job)
    proc = cotune("report", "e2e", "--plan", "plan.json", "-o", "out/report.md", cwd=job)
    assert proc.returncode == 0, proc.stderr
    md = (job / "out" / "report.md").read_text()
    assert "**Model step, from the tuned operations**" in md and "| c_matmul K=128 M=16 N=128 |" in md
    data = json.loads((job / "out" / "report.json").read_text())
    (section,) = data["sections"]
    assert section["precision"] == "fp32" and len(section["problems"]) == 2
    estimates = {e["batch"]: e for e in section["model"]}
    for m, t in times.items():
        # tokens / (layers x (2 calls x time) + head), from the exported winners
        assert estimates[m]["tokens_per_s"] == pytest.approx(m / (4 * 2 * t + t), rel=1e-9)
    assert [p.name for p in (job / "out").glob("*-step.png")] and all(
        p.stat().st_size > 1000 for p in (job / "out").glob("*.png")
    )
    client = MlflowClient(f"sqlite:///{job}/cotune-runs/mlflow.db")
    parents = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`cotune.study` != ''")
    assert parents and all(
        "report/report.md" in [a.path for a in client.list_artifacts(r.info.run_id, "report")] for r in parents
    )


def test_html_report_is_a_real_page_in_a_browser(job, tmp_path):
    """Headless Chromium renders the page: real tables whose numbers carry units, every plot loaded with
    its pixels, and a screenshot that is not blank (COTUNE_SCREENSHOTS=DIR keeps it, for the docs)."""
    _plan(job)
    proc = cotune("report", "e2e", "--plan", "plan.json", "-o", "html/report.html", cwd=job)
    assert proc.returncode == 0, proc.stderr
    page = job / "html" / "report.html"
    assert page.read_text().startswith("<!doctype html>")
    with browser() as chrome:
        chrome.get(page.as_uri())
        tables = chrome.find_elements("css selector", "table")
        assert len(tables) >= 2
        cells = [td.text for td in chrome.find_elements("css selector", "td")]
        assert any(c.endswith((" µs", " ms")) for c in cells) and any("GFLOP/s" in c for c in cells)
        loaded = chrome.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert loaded and all(loaded)
        shot = screenshot(chrome, tmp_path / "report.png", keep_as="report.png")
    assert not blank(shot)


def test_export_formats_verify_here_and_refuse_what_does_not_apply(job):
    proc = cotune("export", "e2e", "-o", "verified.json", cwd=job)
    assert proc.returncode == 0, proc.stderr
    assert "verified 2 c_matmul config(s) on this machine" in proc.stdout
    proc = cotune("export", "e2e", "--format", "vllm", "--no-verify", cwd=job)
    assert proc.returncode == 1 and "no fused_moe results to export for vllm" in proc.stderr
    proc = cotune("export", "e2e", "--format", "onnx", cwd=job)
    assert proc.returncode == 1 and "unknown export format 'onnx'" in proc.stderr
