"""A small real job through the CLI: real gcc, real Optuna SQLite storage, real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cotune.tuner.export.serving import ConfigTable

from tests.cli import cotune, tune_and_export

SPEC = """
name: e2e
kernel: c_matmul
problems:
  - {M: [16, 64], N: 128, K: 128}
budget: {trials: 6}
sampler: {name: tpe, seed: 1}
top_k: 2
bench: {warmup: 1, repeats: 3, timeout_s: 30, remeasure_repeats: 5}
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    work = tmp_path_factory.mktemp("job")
    tune_and_export(work, SPEC)
    return work


def test_mlflow_has_a_parent_per_problem_and_a_child_per_trial(job):
    import optuna
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{job}/cotune-runs/mlflow.db")
    exp = client.get_experiment_by_name("cotune/e2e")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.data.tags["cotune.problem"] for r in parents) == [
        "c_matmul:K=128,M=16,N=128:fp32",
        "c_matmul:K=128,M=64,N=128:fp32",
    ]
    storage = f"sqlite:///{job}/cotune-runs/optuna.db"
    for parent in parents:
        study = optuna.load_study(study_name=parent.data.tags["cotune.study"], storage=storage)
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == len(study.trials)
        ok = [c for c in children if c.data.tags["cotune.state"] == "ok"]
        assert len({json.dumps(c.data.params, sort_keys=True) for c in ok}) >= 6
        assert all({"TILE_M", "LOOP_ORDER"} <= set(c.data.params) and c.data.metrics["time_s"] > 0 for c in ok)
        assert "best_time_s" in parent.data.metrics and parent.data.params["best.TILE_M"]
        artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"best_config.json", "trials.csv", "optimization_history.png"} <= artifacts
        assert parent.data.tags["cotune.source_hash"] and parent.data.tags["cotune.toolchain.cc"]


def test_export_holds_the_fastest_remeasured_config(job):
    import optuna

    data = json.loads((job / "best.json").read_text())
    assert data["schema_version"] == 1 and len(data["entries"]) == 2
    storage = f"sqlite:///{job}/cotune-runs/optuna.db"
    for entry in data["entries"]:
        study = optuna.load_study(study_name=entry["provenance"]["study"], storage=storage)
        best = study.user_attrs["best"]
        assert entry["config"] == best["config"] and entry["provenance"]["trial"] == best["trial"]
        assert entry["metrics"]["repeats"] == 5  # the re-measure, not the tuning run
        assert entry["provenance"]["mlflow_run_id"] == study.user_attrs["mlflow_run_id"]


def test_serving_lookup_uses_nearest_batch(job):
    table = ConfigTable.load(job / "best.json")
    device = table.entries[0].device
    by_m = {e.shape["M"]: e.config for e in table.entries}
    assert table.lookup("c_matmul", {"M": 16, "N": 128, "K": 128}, "fp32", device).config == by_m[16]
    assert table.lookup("c_matmul", {"M": 50, "N": 128, "K": 128}, "fp32", device).config == by_m[64]
    assert table.lookup("c_matmul", {"M": 1, "N": 128, "K": 128}, "fp32", device).config == by_m[16]
    assert table.lookup("c_matmul", {"M": 16, "N": 256, "K": 128}, "fp32", device) is None


def test_rerun_resumes_and_measures_nothing_new(job):
    before = json.loads(cotune("status", "e2e", "--json", cwd=job).stdout)
    proc = cotune("tune", "spec.yaml", cwd=job)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(cotune("status", "e2e", "--json", cwd=job).stdout)
    assert len(rows) == 2 and all(r["best_config"] for r in rows)
    assert {r["study"]: r["trials"] for r in rows} == {r["study"]: r["trials"] for r in before}


@pytest.mark.parametrize(
    ("args", "spec", "message"),
    [
        (["tune", "spec.yaml"], SPEC.replace("c_matmul", "cublas_magic"), "unknown kernel 'cublas_magic'"),
        # printed as text, not as Rich markup, which would drop "[gpu]" as a tag
        (["tune", "spec.yaml"], SPEC.replace("c_matmul", '"c_matmul[gpu]"'), "unknown kernel 'c_matmul[gpu]'"),
        (["tune", "spec.yaml"], SPEC + "bogus: 1\n", "spec.yaml:10: bogus: unknown key"),
        (["tune", "missing.yaml"], SPEC, "missing.yaml: cannot read"),
        (["tune", "spec.yaml", "--storage", "postgresql://127.0.0.1:1/nodb"], SPEC, "cannot open Optuna storage"),
        (["export", "nojob"], SPEC, "no tuning results at sqlite:///cotune-runs/optuna.db"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, args, spec, message):
    (tmp_path / "spec.yaml").write_text(spec)
    proc = cotune(*args, cwd=tmp_path)
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    if args[0] == "tune":
        assert not (tmp_path / "cotune-runs").exists()


GPU_SPEC = """
name: gpu-job
kernel: triton_matmul
problems: [{M: 16, N: 64, K: 64}]
precisions: [bf16]
budget: {trials: 3}
"""


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="this machine has an NVIDIA driver")
def test_a_gpu_kernel_without_a_gpu_is_one_clear_line_and_writes_nothing(tmp_path):
    (tmp_path / "spec.yaml").write_text(GPU_SPEC)
    proc = cotune("tune", "spec.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert "kernel triton_matmul runs on cuda only: no usable NVIDIA GPU" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "cotune-runs").exists()


def test_export_refuses_a_format_the_job_cannot_feed_before_measuring_anything(job):
    """A c_matmul job has nothing for vLLM: one line, exit 1, no "verified" re-measure, no folder."""
    proc = cotune("export", "e2e", "--format", "vllm", "-o", "vllm-out", cwd=job)
    assert proc.returncode == 1
    assert "no fused_moe results to export for vllm" in proc.stderr and "Traceback" not in proc.stderr
    assert "verified" not in proc.stdout and not (job / "vllm-out").exists()


def test_mlflow_shows_the_job_as_a_user_reads_it(job):
    """Parent runs named by what tells them apart, the classic runs layout, the key numbers under short
    names, and artifacts under cotune-runs/ rather than an mlruns/ folder wherever the command ran."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{job}/cotune-runs/mlflow.db")
    exp = client.get_experiment_by_name("cotune/e2e")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.artifact_location == (job / "cotune-runs" / "mlartifacts").resolve().as_uri()
    parents = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.run_name for r in parents) == ["M=16 · fp32", "M=64 · fp32"]
    for run in parents:
        assert {"time_ms", "gflops", "trials_ok", "trials_fail"} <= set(run.data.metrics)
        assert run.data.metrics["time_ms"] == pytest.approx(run.data.metrics["best_time_s"] * 1e3)
    assert (job / "cotune-runs" / "mlartifacts").is_dir() and not (job / "mlruns").exists()


def test_mlflow_runs_page_shows_each_problem_by_its_own_name(job, tmp_path):
    """MLflow's own UI, served from the job's store, in headless Chromium: the runs page lists both parent
    runs, told apart by name (COTUNE_SCREENSHOTS=DIR keeps the screenshot, for the docs)."""
    from mlflow import MlflowClient
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser import blank, browser, screenshot
    from tests.service.stack import MlflowServer

    exp = MlflowClient(f"sqlite:///{job}/cotune-runs/mlflow.db").get_experiment_by_name("cotune/e2e")
    server = MlflowServer(job / "cotune-runs")
    try:
        with browser() as chrome:
            chrome.get(f"{server.url}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning")
            names = ("M=16 · fp32", "M=64 · fp32")
            WebDriverWait(chrome, 90).until(lambda c: all(n in c.find_element("tag name", "body").text for n in names))
            for close in chrome.find_elements("css selector", "button[aria-label='Close']"):  # MLflow's assistant
                close.click()
            shot = screenshot(chrome, tmp_path / "runs.png", keep_as="mlflow-runs.png")
    finally:
        server.stop()
    assert not blank(shot)


def test_a_problem_no_config_fits_is_reported_with_why_not_a_traceback(tmp_path):
    """topk 4 of 2 experts: every config of the space breaks topk <= E; the job ends, measuring nothing,
    and says which constraint ruled the configs out."""
    spec = (
        "name: none-fit\nkernel: fused_moe\nproblems:\n  - {M: 1, E: 2, H: 64, I: 32, topk: 4}\n"
        "precisions: [bf16]\nbudget: {trials: 3}\n"
    )
    (tmp_path / "spec.yaml").write_text(spec)
    proc = cotune("tune", "spec.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "no config of the space is feasible for fused_moe:E=2,H=64,I=32,M=1,topk=4:bf16" in proc.stdout
    assert "ruled out by topk <= E (1920 of 1920)" in proc.stdout
