from __future__ import annotations

import os
from pathlib import Path

import pytest
from cotune.tuner.device.profiles import detect
from cotune.tuner.types import DeviceProfile

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Triton kernels under test run in Triton's interpreter on CPU tensors, except in a run that selects the
    GPU tests (``-m gpu``), where they compile for the GPU. The mode is chosen when a module of
    kernels/triton_jit is first imported, so it is set here, before collection imports any test module;
    the tests that compile for a GPU target run in a subprocess without it (tests/aot.py)."""
    selects_gpu = "gpu" in (config.option.markexpr or "").replace("not gpu", "")
    if not selects_gpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def cpu() -> DeviceProfile:
    return detect("cpu")


@pytest.fixture
def write(tmp_path: Path):
    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write


@pytest.fixture
def tune_one(tmp_path: Path, cpu: DeviceProfile):
    """Run a one-problem local job from spec text, on SQLite in tmp_path and without MLflow; returns the
    problem's outcome, its Optuna study and the storage URL."""

    def _tune(text: str):
        import optuna
        from cotune.tuner.driver import tune_job
        from cotune.tuner.spec.job import parse_spec
        from cotune.tuner.track.tracker import NullTracker

        url = f"sqlite:///{tmp_path}/studies.db"
        (outcome,) = tune_job(parse_spec(text), url, cpu, NullTracker())
        return outcome, optuna.load_study(study_name=outcome.study_name, storage=url), url

    return _tune
