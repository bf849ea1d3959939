from __future__ import annotations

from pathlib import Path

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
