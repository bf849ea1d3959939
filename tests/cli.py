"""Running the real `cotune` CLI from tests, in a clean environment rooted at the test's directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def cotune(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cotune.tuner.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )


def tune_and_export(work: Path, spec: str) -> subprocess.CompletedProcess[str]:
    """Write ``spec`` to work/spec.yaml and run `cotune tune spec.yaml --export best.json`, which must succeed."""
    (work / "spec.yaml").write_text(spec)
    proc = cotune("tune", "spec.yaml", "--export", "best.json", cwd=work)
    assert proc.returncode == 0, proc.stderr
    return proc
