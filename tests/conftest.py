from __future__ import annotations

import os
from pathlib import Path

# Triton kernels under test run in Triton's interpreter on CPU tensors. It is chosen when a module of
# kernels/triton_jit is first imported, so it is set before any test imports one; the tests that compile
# for a GPU target run in a subprocess without it (tests/aot.py).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from tuner.device import detect
from tuner.types import DeviceProfile

REPO = Path(__file__).resolve().parents[1]


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
