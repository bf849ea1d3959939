from __future__ import annotations

import os
from pathlib import Path

import pytest

from tuner.device import detect
from tuner.types import DeviceProfile

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
